// Command fcstandin is the stand-in firecracker used only by tests: it
// serves Firecracker's API on a unix socket and simulates a microVM. See
// package internal/fcstandin/server for the behaviour and the FCSTANDIN_*
// controls, and internal/fcstandin.Build for how tests build it.
package main

import (
	"os"

	"github.com/mvm-dev/microvm/internal/fcstandin/server"
)

func main() {
	os.Exit(server.Main(os.Args[1:], os.Stdout, os.Stderr))
}
