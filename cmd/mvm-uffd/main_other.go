//go:build !linux

// Command mvm-uffd serves Firecracker snapshot memory over userfaultfd; it
// runs on Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "mvm-uffd: userfaultfd is Linux-only")
	os.Exit(2)
}
