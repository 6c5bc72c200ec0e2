package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/network"
)

// configFile is the file, in the state directory, that keeps the host
// settings mvm was first given there.
const configFile = "config.json"

// A setting is a host setting that the state directory remembers: the
// first command that gives it (by flag or environment variable) saves it,
// later commands read it, and a command that gives another value is
// refused (`mvm config set` changes it).
type setting struct {
	key, env string
	// def is the value when neither the command line nor the state
	// directory gives one.
	def string
	// ptr is the flag's string form in globals (the int of net-pool-size
	// goes through text).
	get func(g *globals) string
	set func(g *globals, v string)
	// norm checks a value and returns its saved form (a binary's absolute
	// path); it returns a usage error for a bad value.
	norm func(v string) (string, error)
	// network settings shape the VMs' networks: they cannot change while
	// a VM has one.
	network bool
	help    string
}

// settings are the host settings, in the order `mvm config` shows them.
var settings = []setting{
	{
		key: "firecracker-bin", env: "MVM_FIRECRACKER_BIN", def: "firecracker (from PATH)",
		get:  func(g *globals) string { return g.firecrackerBin },
		set:  func(g *globals, v string) { g.firecrackerBin = v },
		norm: normBinaryOf("firecracker-bin"),
		help: "firecracker binary of new VMs (each VM keeps the one it was created with)",
	},
	{
		key: "jailer-bin", env: "MVM_JAILER_BIN", def: "",
		get:  func(g *globals) string { return g.jail.bin },
		set:  func(g *globals, v string) { g.jail.bin = v },
		norm: normBinaryOf("jailer-bin"),
		help: "jailer that runs new VMs in their own chroot, uid and cgroups (jailed mode is on when set; each jailed VM keeps the jailer and firecracker it was created with)",
	},
	{
		key: "jailer-uid-range", env: "MVM_JAILER_UID_RANGE", def: fmt.Sprintf("%d:%d", firecracker.DefaultJailUIDBase, firecracker.DefaultJailUIDCount),
		get: func(g *globals) string { return g.jail.uidRange },
		set: func(g *globals, v string) { g.jail.uidRange = v },
		norm: func(v string) (string, error) {
			if _, err := parseUIDRange(v); err != nil {
				return "", err
			}
			return v, nil
		},
		help: "uids of jailed VMs, FIRST:COUNT, one per live VM",
	},
	{
		key: "egress-iface", env: "MVM_EGRESS_IFACE", def: "",
		get:  func(g *globals) string { return g.net.egressIface },
		set:  func(g *globals, v string) { g.net.egressIface = v },
		norm: normIfaceName,
		help: "host interface VM traffic leaves through (managed networking is on when set)", network: true,
	},
	{
		key: "net-pool", env: "MVM_NET_POOL", def: network.DefaultPool.String(),
		get: func(g *globals) string { return g.net.pool },
		set: func(g *globals, v string) { g.net.pool = v },
		norm: func(v string) (string, error) {
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() {
				return "", usagef("net-pool must be an IPv4 range such as %s (got %q)", network.DefaultPool, v)
			}
			return p.Masked().String(), nil
		},
		help: "IPv4 range the VMs' host addresses come from", network: true,
	},
	{
		key: "net-pool-size", env: "MVM_NET_POOL_SIZE", def: "0",
		get: func(g *globals) string { return strconv.Itoa(g.net.poolSize) },
		set: func(g *globals, v string) { g.net.poolSize, _ = strconv.Atoi(v) },
		norm: func(v string) (string, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return "", usagef("net-pool-size must be a whole number >= 0 (got %q)", v)
			}
			return strconv.Itoa(n), nil
		},
		help: "VM networks kept pre-built while a command runs",
	},
	{
		key: "net-run-dir", env: "MVM_NET_RUN_DIR", def: network.DefaultRunDir,
		get: func(g *globals) string { return g.net.runDir },
		set: func(g *globals, v string) { g.net.runDir = v },
		norm: func(v string) (string, error) {
			if v == "" {
				return "", usagef("net-run-dir must name a directory")
			}
			return filepath.Abs(v)
		},
		help: "where the VMs' network namespaces are pinned", network: true,
	},
}

// normIfaceName checks an interface name by the kernel's rule (dev_valid_name:
// 1 to 15 bytes, not "." or "..", no '/', ':' or white space).
func normIfaceName(v string) (string, error) {
	if len(v) == 0 || len(v) > 15 || v == "." || v == ".." || strings.ContainsFunc(v, func(r rune) bool {
		return r == '/' || r == ':' || r <= ' ' || r == 0x7f
	}) {
		return "", usagef("egress-iface must be a network interface name: 1 to 15 characters, without '/', ':' or spaces (got %q)", v)
	}
	return v, nil
}

func settingOf(key string) (setting, bool) {
	i := slices.IndexFunc(settings, func(s setting) bool { return s.key == key })
	if i < 0 {
		return setting{}, false
	}
	return settings[i], true
}

// normBinaryOf returns the check of setting key, a binary: named by path
// or looked up in PATH, it is saved as its absolute path (a name not found
// is kept: opening the runtime says so).
func normBinaryOf(key string) func(string) (string, error) {
	return func(v string) (string, error) {
		if v == "" {
			return "", usagef("%s must name a binary", key)
		}
		p := v
		if !strings.ContainsRune(v, '/') {
			lp, err := exec.LookPath(v)
			if err != nil {
				return v, nil
			}
			p = lp
		}
		return filepath.Abs(p)
	}
}

// savedSettings is the content of config.json: key -> value.
type savedSettings map[string]string

func configPath(stateDir string) string { return filepath.Join(stateDir, configFile) }

// loadSettings reads the saved settings of stateDir (none when the file
// does not exist), refusing a file with an unknown key or a value its
// setting does not take.
func loadSettings(stateDir string) (savedSettings, error) {
	s, err := loadSettingsAsIs(stateDir)
	if err != nil {
		return nil, err
	}
	for k, v := range s {
		st, ok := settingOf(k)
		if !ok {
			return nil, fmt.Errorf("settings file %s: unknown setting %q (fix or remove it)", configPath(stateDir), k)
		}
		if _, err := st.norm(v); err != nil {
			return nil, fmt.Errorf("settings file %s: %w (change it with mvm config set)", configPath(stateDir), err)
		}
	}
	return s, nil
}

// loadSettingsAsIs reads the saved settings of stateDir without checking
// them: mvm config and mvm config set use it, being how a bad saved
// value is shown and changed, and so do updateSettings and
// refuseWithNetworks, which run under config set.
func loadSettingsAsIs(stateDir string) (savedSettings, error) {
	b, err := os.ReadFile(configPath(stateDir))
	if errors.Is(err, fs.ErrNotExist) {
		return savedSettings{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	s := savedSettings{}
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("settings file %s is not valid JSON (fix or remove it): %w", configPath(stateDir), err)
	}
	return s, nil
}

// updateSettings applies change to the saved settings of stateDir under
// an exclusive lock of the state directory's settings, and writes them
// atomically (temp file, fsync, rename). The state directory must exist.
func updateSettings(stateDir string, change func(savedSettings) error) error {
	lock, err := os.OpenFile(configPath(stateDir)+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("save settings: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("save settings: lock: %w", err)
	}
	s, err := loadSettingsAsIs(stateDir)
	if err != nil {
		return err
	}
	if err := change(s); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(stateDir, "."+configFile+".*")
	if err != nil {
		return fmt.Errorf("save settings: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), configPath(stateDir))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save settings: %w", err)
	}
	if d, err := os.Open(stateDir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// resolveSettings merges the command line with the saved settings: a
// setting the command line does not give takes the saved value; one it
// gives that the state directory has not saved is kept in g.unsaved, to be
// saved once the runtime opened with it; one that contradicts the saved
// value is refused with a usage error saying how to change it.
func (g *globals) resolveSettings(cmd *cobra.Command) error {
	if g.net.envErr != nil {
		return g.net.envErr
	}
	// mvm config and mvm config set work with the saved settings as they
	// are: they are how a contradiction, or a bad saved value, is resolved.
	configCmd := cmd.Name() == "config" || cmd.HasParent() && cmd.Parent().Name() == "config"
	load := loadSettings
	if configCmd {
		load = loadSettingsAsIs
	}
	saved, err := load(g.stateDir)
	if err != nil {
		return err
	}
	g.unsaved = map[string]string{}
	for _, st := range settings {
		given, how := g.givenSetting(cmd, st)
		if configCmd {
			if sv, ok := saved[st.key]; ok {
				st.set(g, sv)
			}
			continue
		}
		sv, isSaved := saved[st.key]
		if !given {
			if isSaved {
				st.set(g, sv)
			}
			continue
		}
		v, err := st.norm(st.get(g))
		if err != nil {
			return err
		}
		switch {
		case !isSaved:
			if v != "" {
				g.unsaved[st.key] = v
			}
		case v != sv:
			return usagef("%s %s contradicts this state directory's %s %s (saved in %s); to change it for every later command: mvm config set %s %s",
				how, strconv.Quote(v), st.key, strconv.Quote(sv), configPath(g.stateDir), st.key, shellArg(v))
		}
	}
	return nil
}

// givenSetting reports whether the command line gives st (its flag, or
// its environment variable), and how, for messages.
func (g *globals) givenSetting(cmd *cobra.Command, st setting) (bool, string) {
	if f := cmd.Flags().Lookup(st.key); f != nil && f.Changed {
		return true, "--" + st.key
	}
	if os.Getenv(st.env) != "" {
		return true, st.env
	}
	return false, ""
}

// saveGiven saves the settings the command line gave for the first time.
func (g *globals) saveGiven() error {
	if len(g.unsaved) == 0 {
		return nil
	}
	err := updateSettings(g.stateDir, func(s savedSettings) error {
		for k, v := range g.unsaved {
			if sv, ok := s[k]; ok && sv != v {
				return usagef("--%s %s contradicts this state directory's %s %s, saved meanwhile by another command", k, strconv.Quote(v), k, strconv.Quote(sv))
			}
			s[k] = v
		}
		return nil
	})
	if err == nil {
		g.unsaved = nil
	}
	return err
}

// shellArg quotes v for a shell when it needs it.
func shellArg(v string) string {
	if v != "" && strings.IndexFunc(v, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r == ':' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

func configCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show the host settings this state directory remembers",
		Long: "mvm remembers, in <state-dir>/" + configFile + ", the host settings first given to it\n" +
			"(--firecracker-bin, --jailer-bin, --jailer-uid-range, --egress-iface, --net-pool, --net-pool-size,\n" +
			"--net-run-dir or their\n" +
			"variables); later commands use them, and a command giving another value is refused.\n" +
			"'mvm config set KEY VALUE' changes one ('' forgets it).",
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			saved, err := loadSettingsAsIs(g.stateDir)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(g.stdout, saved)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
			for _, st := range settings {
				v, src := saved[st.key], "saved"
				if _, ok := saved[st.key]; !ok {
					v, src = st.def, "default"
					if v == "" {
						v = "-"
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", st.key, v, src)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(configSetCmd(g))
	return cmd
}

func configSetCmd(g *globals) *cobra.Command {
	keys := make([]string, len(settings))
	for i, st := range settings {
		keys[i] = st.key
	}
	return &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Change a host setting of this state directory ('' forgets it); KEY is one of " + strings.Join(keys, ", "),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("config set needs KEY VALUE (got %d argument(s)); KEY is one of %s", len(args), strings.Join(keys, ", "))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			st, ok := settingOf(args[0])
			if !ok {
				return usagef("config set: unknown setting %q; KEY is one of %s", args[0], strings.Join(keys, ", "))
			}
			v := args[1]
			if v != "" {
				var err error
				if v, err = st.norm(v); err != nil {
					return err
				}
			}
			if err := mkdirState(g.stateDir); err != nil {
				return err
			}
			if st.network {
				if err := g.refuseWithNetworks(cmd, st.key); err != nil {
					return err
				}
			}
			if st.key == "egress-iface" && v != "" {
				if _, err := net.InterfaceByName(v); err != nil {
					return usagef("egress-iface: this host has no network interface %q", v)
				}
			}
			if (st.key == "jailer-bin" || st.key == "firecracker-bin") && v != "" {
				fc, jailer := g.firecrackerBin, g.jail.bin
				if st.key == "jailer-bin" {
					jailer = v
				} else {
					fc = v
				}
				if err := refuseOtherRelease(cmd.Context(), fc, jailer); err != nil {
					return err
				}
			}
			return updateSettings(g.stateDir, func(s savedSettings) error {
				if v == "" {
					delete(s, st.key)
				} else {
					s[st.key] = v
				}
				return nil
			})
		},
	}
}

// refuseOtherRelease refuses a firecracker and a jailer of different
// releases (the runtime would refuse to open with them, so every later
// command would fail). Binaries that cannot tell their version are left
// to the runtime's own check.
func refuseOtherRelease(ctx context.Context, fc, jailer string) error {
	if fc == "" || jailer == "" {
		return nil
	}
	_, fcCheck := checkBinary(ctx, "firecracker", fc, "")
	_, jCheck := checkBinary(ctx, "jailer", jailer, "")
	if fcCheck.Status != "ok" || jCheck.Status != "ok" {
		return nil
	}
	if fv, jv, differ := otherRelease(fcCheck, jCheck); differ {
		return usagef("jailer-bin %s is %s but firecracker-bin %s is %s: a jailer runs only its release's firecracker (to change both: mvm config set jailer-bin '' first)", jailer, jv, fc, fv)
	}
	return nil
}

// refuseWithNetworks refuses to change a network setting while a VM of the
// state directory has a managed network built with the old one.
func (g *globals) refuseWithNetworks(cmd *cobra.Command, key string) error {
	saved, err := loadSettingsAsIs(g.stateDir)
	if err != nil {
		return err
	}
	if saved["egress-iface"] == "" {
		return nil // no managed network was ever built here
	}
	// The VMs are listed by a runtime without managed networking: the
	// setting being changed may be what keeps networking from starting
	// (an interface gone or misnamed), and listing needs none of it.
	iface := g.net.egressIface
	g.net.egressIface = ""
	defer func() { g.net.egressIface = iface }()
	return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
		vms, err := rt.List(cmd.Context())
		if err != nil {
			return err
		}
		var with []string
		for _, vm := range vms {
			if vm.Backend.Network != nil {
				with = append(with, vm.ID)
			}
		}
		if len(with) > 0 {
			return fmt.Errorf("cannot change %s: %d VM(s) have managed networks built with the current value (%s); destroy them first: %w",
				key, len(with), strings.Join(with, ", "), microvm.ErrInvalidArgument)
		}
		return nil
	})
}

// mkdirState creates the state directory (private) if missing.
func mkdirState(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}
