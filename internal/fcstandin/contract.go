package fcstandin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// This file is the stand-in's contract with the tests that drive it: what
// they select (API flavours, spec files) and what they may check (fault
// messages, guest I/O figures). The server imports it, so both sides use
// one definition.

// API flavours the stand-in emulates (FCSTANDIN_API).
const (
	// APIv10 emulates Firecracker v1.0.0 (spec firecracker-api-v1.0.yaml).
	APIv10 = "v1.0"
	// APILatest emulates Firecracker 1.17.0-dev (spec firecracker-api.yaml).
	APILatest = "latest"
)

// Spec file names inside the spec directory (FCSTANDIN_SPEC_DIR).
const (
	SpecFileLatest = "firecracker-api.yaml"
	SpecFileV10    = "firecracker-api-v1.0.yaml"
)

// ErrSpecNotFound is returned when the reference specs cannot be located.
var ErrSpecNotFound = errors.New("fcstandin: Firecracker API spec directory not found")

// Fault messages shared by many endpoints (Firecracker's wording).
const (
	MsgPreBoot        = "The requested operation is not supported before starting the microVM."
	MsgPostBoot       = "The requested operation is not supported after starting the microVM."
	MsgLoadNotAllowed = "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
	MsgEmptyPut       = "Empty PUT request."
	MsgEmptyPatch     = "Empty PATCH request."
	MsgGetBody        = "GET request cannot have a body."
	MsgIDMismatch     = "The id from the path does not match the id from the body!"
	MsgInvalidID      = "API Resource IDs can only contain alphanumeric characters and underscores."
	MsgEmptyID        = "The ID cannot be empty."
	MsgNoKernel       = "Start microvm error: Cannot start microvm without kernel configuration."
	MsgLoggerTwice    = "Logger error: Reinitialization of logger not allowed."
	MsgMetricsTwice   = "Metrics error: Reinitialization of metrics not allowed."
	MsgVcpuCount      = "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."
	MsgMemSize        = "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size."
	MsgMmdsNotInit    = "MMDS error: The MMDS data store is not initialized."
	MsgMmdsTooBig     = "MMDS limit exceeded error: The MMDS patch request doesn't fit."
)

// Guest I/O the stand-in reports for each flush of a booted VM (it runs no
// guest): every drive read GuestReadBytes in one request (and a writable
// one wrote GuestWriteBytes), every interface moved one packet each way.
// Deterministic, so tests can check totals: n flushes, n times these.
const (
	GuestReadBytes  = 4096
	GuestWriteBytes = 512
	GuestRxBytes    = 98
	GuestTxBytes    = 42
)

// FindSpecDir locates the directory that holds both reference specs: env
// FCSTANDIN_SPEC_DIR, then MVM_REFERENCE_DIR, then a "shared/reference"
// folder found by walking up from each of the start directories.
func FindSpecDir(getenv func(string) string, starts ...string) (string, error) {
	for _, env := range []string{"FCSTANDIN_SPEC_DIR", "MVM_REFERENCE_DIR"} {
		if d := getenv(env); d != "" {
			if err := checkSpecDir(d); err != nil {
				return "", fmt.Errorf("%s=%s: %w", env, d, err)
			}
			return d, nil
		}
	}
	for _, start := range starts {
		if start == "" {
			continue
		}
		d, err := filepath.Abs(start)
		if err != nil {
			continue
		}
		for {
			cand := filepath.Join(d, "shared", "reference")
			if checkSpecDir(cand) == nil {
				return cand, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", fmt.Errorf("%w: set FCSTANDIN_SPEC_DIR to the folder holding %s and %s (searched for shared/reference above %s)",
		ErrSpecNotFound, SpecFileLatest, SpecFileV10, strings.Join(starts, ", "))
}

func checkSpecDir(d string) error {
	for _, f := range []string{SpecFileLatest, SpecFileV10} {
		st, err := os.Stat(filepath.Join(d, f))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrSpecNotFound, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file", ErrSpecNotFound, filepath.Join(d, f))
		}
	}
	return nil
}
