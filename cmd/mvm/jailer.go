package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mvm-dev/microvm/firecracker"
)

// jailFlags are the flags that run VMs through Firecracker's jailer.
type jailFlags struct {
	bin      string
	uidRange string
	fs       *pflag.FlagSet
}

func (j *jailFlags) flags(root *cobra.Command) {
	pf := root.PersistentFlags()
	j.fs = pf
	pf.StringVar(&j.bin, "jailer-bin", os.Getenv("MVM_JAILER_BIN"),
		"run each VM's firecracker through this jailer: own chroot, uid and cgroups; needs root (env MVM_JAILER_BIN; default: no jailer)")
	pf.StringVar(&j.uidRange, "jailer-uid-range", os.Getenv("MVM_JAILER_UID_RANGE"),
		fmt.Sprintf("uids of jailed VMs, FIRST:COUNT, one per live VM (env MVM_JAILER_UID_RANGE; default %d:%d)",
			firecracker.DefaultJailUIDBase, firecracker.DefaultJailUIDCount))
}

// config returns the runtime's jailer settings, nil without --jailer-bin.
func (j *jailFlags) config() (*firecracker.JailerConfig, error) {
	if j.bin == "" {
		// A range given on this command line without a jailer is a
		// mistake; a saved one (config set) waits for a jailer.
		if j.fs != nil && j.fs.Changed("jailer-uid-range") {
			return nil, usagef("--jailer-uid-range needs --jailer-bin")
		}
		return nil, nil
	}
	cfg := &firecracker.JailerConfig{Bin: j.bin}
	if j.uidRange != "" {
		r, err := parseUIDRange(j.uidRange)
		if err != nil {
			return nil, err
		}
		cfg.UIDBase, cfg.UIDCount = r[0], r[1]
	}
	return cfg, nil
}

// parseUIDRange parses FIRST:COUNT.
func parseUIDRange(v string) ([2]int, error) {
	first, count, ok := strings.Cut(v, ":")
	base, err1 := strconv.Atoi(first)
	n, err2 := strconv.Atoi(count)
	if !ok || err1 != nil || err2 != nil || base < 1 || n < 1 {
		return [2]int{}, usagef("--jailer-uid-range must be FIRST:COUNT with positive numbers (got %q)", v)
	}
	return [2]int{base, n}, nil
}
