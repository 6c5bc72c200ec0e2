//go:build !linux

package main

import (
	"context"
	"errors"
)

func run(ctx context.Context, cfg config) error {
	return errors.New("mvm-agent runs on Linux only")
}
