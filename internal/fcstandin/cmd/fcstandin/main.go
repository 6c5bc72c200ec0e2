// Command fcstandin is the stand-in firecracker used only by tests: it
// serves Firecracker's API on a unix socket and simulates a microVM. See
// package internal/fcstandin for the behaviour and the FCSTANDIN_* controls.
package main

import (
	"os"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

func main() {
	os.Exit(fcstandin.Main(os.Args[1:], os.Stdout, os.Stderr))
}
