package main

import (
	"context"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// openFirecracker opens the Firecracker runtime over stateDir, adopting the
// VMs earlier mvm commands left running.
func openFirecracker(ctx context.Context, stateDir, bin string) (microvm.Runtime, error) {
	return firecracker.Open(ctx, firecracker.Config{StateDir: stateDir, FirecrackerBin: bin})
}
