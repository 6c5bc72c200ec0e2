package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/network"
)

// netFlags are the global flags of managed networking.
type netFlags struct {
	pool        string
	egressIface string
	poolSize    int
	runDir      string
	envErr      error // a bad MVM_NET_POOL_SIZE, reported as a usage error
}

// flags defines the flags on root, for every command.
func (n *netFlags) flags(root *cobra.Command) {
	pf := root.PersistentFlags()
	size := 0
	if v := os.Getenv("MVM_NET_POOL_SIZE"); v != "" {
		var err error
		if size, err = strconv.Atoi(v); err != nil {
			n.envErr = usagef("MVM_NET_POOL_SIZE must be a whole number (got %q)", v)
		}
	}
	pf.StringVar(&n.egressIface, "egress-iface", os.Getenv("MVM_EGRESS_IFACE"),
		"host interface that VM traffic leaves through; enables managed networking (--net) (env MVM_EGRESS_IFACE)")
	pf.StringVar(&n.pool, "net-pool", envOr("MVM_NET_POOL", network.DefaultPool.String()),
		"IPv4 range the VMs' host addresses come from, 4 addresses per VM (env MVM_NET_POOL)")
	pf.IntVar(&n.poolSize, "net-pool-size", size,
		"VM networks kept pre-built while the command runs (env MVM_NET_POOL_SIZE)")
	pf.StringVar(&n.runDir, "net-run-dir", envOr("MVM_NET_RUN_DIR", network.DefaultRunDir),
		"where the VMs' network namespaces are pinned (env MVM_NET_RUN_DIR)")
}

// check validates the flags that managed networking uses, when it is on.
func (n *netFlags) check() error {
	if n.egressIface == "" {
		return nil
	}
	if n.envErr != nil {
		return n.envErr
	}
	_, err := n.config()
	return err
}

// config is the network.Config of the flags, without its Store.
func (n *netFlags) config() (network.Config, error) {
	pool, err := netip.ParsePrefix(n.pool)
	if err != nil || !pool.Addr().Is4() {
		return network.Config{}, usagef("--net-pool must be an IPv4 range such as %s (got %q)", network.DefaultPool, n.pool)
	}
	if n.poolSize < 0 {
		return network.Config{}, usagef("--net-pool-size must be >= 0 (got %d)", n.poolSize)
	}
	return network.Config{
		Pool:            pool,
		EgressInterface: n.egressIface,
		PoolSize:        n.poolSize,
		RunDir:          n.runDir,
	}, nil
}

// needNet refuses --net without managed networking on the Firecracker
// runtime.
func (g *globals) needNet(what string) error {
	if g.runtime == "firecracker" && g.net.egressIface == "" {
		return usagef("%s needs managed networking: give --egress-iface IFACE once (or mvm config set egress-iface IFACE), the host interface VM traffic leaves through", what)
	}
	return nil
}

// parseEgressRule parses CIDR[,PROTO[,PORT[-PORT]]]: a bare address is a
// /32; PROTO is tcp, udp, icmp or any.
func parseEgressRule(flag, s string) (microvm.EgressRule, error) {
	bad := func(why string) (microvm.EgressRule, error) {
		return microvm.EgressRule{}, usagef("%s must be CIDR[,tcp|udp|icmp|any[,PORT[-PORT]]] (got %q): %s", flag, s, why)
	}
	parts := strings.Split(s, ",")
	if len(parts) > 3 {
		return bad("too many fields")
	}
	var r microvm.EgressRule
	var err error
	if strings.Contains(parts[0], "/") {
		r.CIDR, err = netip.ParsePrefix(parts[0])
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(parts[0]); err == nil {
			r.CIDR = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil {
		return bad("not an address or CIDR")
	}
	if len(parts) > 1 {
		switch p := strings.ToLower(parts[1]); p {
		case "tcp", "udp", "icmp":
			r.Protocol = p
		case "any", "":
		default:
			return bad(fmt.Sprintf("unknown protocol %q", parts[1]))
		}
	}
	if len(parts) > 2 {
		from, to, ranged := strings.Cut(parts[2], "-")
		f, err := strconv.ParseUint(from, 10, 16)
		if err != nil || f == 0 {
			return bad(fmt.Sprintf("port %q is not 1-65535", from))
		}
		r.FromPort = uint16(f)
		if ranged {
			t, err := strconv.ParseUint(to, 10, 16)
			if err != nil || t == 0 {
				return bad(fmt.Sprintf("port %q is not 1-65535", to))
			}
			r.ToPort = uint16(t)
		}
	}
	return r, nil
}

// egressPolicy builds a policy from --deny-all and --allow values; none of
// them is the default policy (nil).
func egressPolicy(flag string, denyAll bool, allow []string) (*microvm.EgressPolicy, error) {
	if !denyAll && len(allow) == 0 {
		return nil, nil
	}
	p := &microvm.EgressPolicy{DenyAll: denyAll}
	for _, a := range allow {
		r, err := parseEgressRule(flag, a)
		if err != nil {
			return nil, err
		}
		p.Allow = append(p.Allow, r)
	}
	return p, nil
}

func egressCmd(g *globals) *cobra.Command {
	var (
		denyAll bool
		allow   []string
	)
	cmd := &cobra.Command{
		Use:   "egress NAME [--deny-all] [--allow CIDR[,PROTO[,PORT[-PORT]]]]...",
		Short: "Replace the egress firewall of a VM's managed network, live (no flags: the default policy)",
		Long: "Replace the egress firewall of a VM's managed network; it applies at once, to open flows too.\n" +
			"With no flags the VM gets the default policy: the internet is allowed; the host, private,\n" +
			"link-local, loopback and CGNAT ranges and other VMs are denied. --allow wins over every deny.",
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := egressPolicy("--allow", denyAll, allow)
			if err != nil {
				return err
			}
			if err := g.needNet("mvm egress"); err != nil {
				return err
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				u, ok := rt.(microvm.EgressUpdater)
				if !ok {
					return fmt.Errorf("mvm egress: the %s runtime cannot update egress policies: %w", g.runtime, microvm.ErrUnsupported)
				}
				vm, err := u.SetEgressPolicy(cmd.Context(), args[0], p)
				if err != nil {
					return err
				}
				return g.printVM(vm)
			})
		},
	}
	cmd.Flags().BoolVar(&denyAll, "deny-all", false, "deny all egress except what --allow lists")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "allow CIDR[,tcp|udp|icmp|any[,PORT[-PORT]]] (repeatable)")
	return cmd
}

func ratelimitCmd(g *globals) *cobra.Command {
	var drives, rx, tx []string
	cmd := &cobra.Command{
		Use:   "ratelimit NAME [--drive ID:RATE]... [--rx [IFACE:]RATE]... [--tx [IFACE:]RATE]...",
		Short: "Change the bandwidth limits of a running or paused VM's drives and network interfaces",
		Long: "Change bandwidth limits live. RATE is bytes per second, with an optional K, M or G suffix\n" +
			"(powers of 1024); 0 removes the limit. --rx limits what the guest receives, --tx what it sends;\n" +
			"IFACE defaults to the VM's managed interface, or its only one. Other limits are kept.\n" +
			"The limits are stored in the VM's spec, so a restart keeps them.",
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(drives)+len(rx)+len(tx) == 0 {
				return usagef("ratelimit needs at least one --drive, --rx or --tx")
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				u, ok := rt.(microvm.RateLimitUpdater)
				if !ok {
					return fmt.Errorf("mvm ratelimit: the %s runtime cannot update rate limits: %w", g.runtime, microvm.ErrUnsupported)
				}
				vm, err := rt.Get(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				upd, err := rateUpdate(vm.Spec, drives, rx, tx)
				if err != nil {
					return err
				}
				if vm, err = u.UpdateRateLimits(cmd.Context(), args[0], upd); err != nil {
					return err
				}
				return g.printVM(vm)
			})
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&drives, "drive", nil, "drive bandwidth ID:RATE, e.g. rootfs:50M (repeatable)")
	f.StringArrayVar(&rx, "rx", nil, "receive bandwidth [IFACE:]RATE (repeatable)")
	f.StringArrayVar(&tx, "tx", nil, "transmit bandwidth [IFACE:]RATE (repeatable)")
	return cmd
}

// rateUpdate turns the flags of `mvm ratelimit` into an update of the
// bandwidth buckets of the VM's devices (a rate of 0 removes the limit);
// the runtime keeps their other buckets. spec gives the interface --rx
// and --tx name when they name none: the managed one, or the only one.
func rateUpdate(spec microvm.Spec, drives, rx, tx []string) (microvm.RateLimitUpdate, error) {
	u := microvm.RateLimitUpdate{}
	for _, d := range drives {
		id, rate, ok := strings.Cut(d, ":")
		if !ok || id == "" {
			return u, usagef("--drive must be ID:RATE, e.g. rootfs:50M (got %q)", d)
		}
		bw, err := parseRate("--drive", rate)
		if err != nil {
			return u, err
		}
		if u.Drives == nil {
			u.Drives = map[string]microvm.LimiterUpdate{}
		}
		u.Drives[id] = microvm.LimiterUpdate{Bandwidth: bw} // an unknown id is named by the runtime
	}
	defIface := ""
	for _, n := range spec.Network {
		if n.HostDevName == "" {
			defIface = n.ID
		}
	}
	if defIface == "" && len(spec.Network) == 1 {
		defIface = spec.Network[0].ID
	}
	for _, dir := range []struct {
		flag string
		vals []string
	}{{"--rx", rx}, {"--tx", tx}} {
		for _, v := range dir.vals {
			id, rate, ok := strings.Cut(v, ":")
			if !ok {
				id, rate = defIface, v
				if id == "" {
					return u, usagef("%s %s: the VM has no managed interface and not exactly one interface; name it as IFACE:RATE", dir.flag, v)
				}
			}
			bw, err := parseRate(dir.flag, rate)
			if err != nil {
				return u, err
			}
			if u.Network == nil {
				u.Network = map[string]microvm.NetLimiterUpdate{}
			}
			l := u.Network[id]
			if dir.flag == "--rx" {
				l.Rx.Bandwidth = bw
			} else {
				l.Tx.Bandwidth = bw
			}
			u.Network[id] = l
		}
	}
	return u, nil
}

// parseRate parses bytes per second with an optional K, M or G suffix
// (powers of 1024) into a bucket refilled every second; 0 is a bucket of
// size 0, which removes the limit.
func parseRate(flag, s string) (*microvm.TokenBucket, error) {
	num, mult := cutSizeSuffix(s)
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return nil, usagef("%s: rate must be bytes per second, a whole number >= 0 with an optional K, M or G suffix (got %q)", flag, s)
	}
	if v == 0 {
		return &microvm.TokenBucket{}, nil
	}
	return &microvm.TokenBucket{Size: v * mult, RefillTime: time.Second}, nil
}
