// Package network gives each microVM an isolated network: a network
// namespace per VM ("slot", after E2B) holding the TAP device Firecracker
// opens, NAT to a unique host-side address, an nftables egress firewall, and
// persisted leases so that no two VMs share an address or a device name.
// It talks to the kernel only through netlink (vishvananda/netlink) and
// nftables netlink (google/nftables); it never runs ip, iptables or nft.
//
// # Topology
//
//	guest eth0 169.254.0.21/30, MAC 06:00:ac:10:00:02 (in Firecracker)
//	  |
//	  |  slot namespace, pinned at <RunDir>/<name>
//	  |  +---------------------------------------------------+
//	  +--| tap0   169.254.0.22/30                            |
//	     |        ip_forward=1; SNAT guest->HostIP,          |
//	     |        DNAT HostIP->guest; table inet <prefix>_fw |
//	     | veth0  B+1/31, default route via B                |
//	     +------|--------------------------------------------+
//	            |
//	  host namespace (Config.HostNS)
//	     <name> B/31; route HostIP (B+2)/32 via B+1; ip_forward=1
//	     table inet <prefix>: masquerade the pool out of EgressInterface,
//	     forward no new flow towards a slot
//
// The guest side is identical in every slot: TAPName, GuestIP, GatewayIP,
// GuestPrefixLen and GuestMAC are constants. A snapshot taken in one slot
// therefore restores in any other (Firecracker's snapshot records the TAP
// name; the guest's ARP cache stays valid) with no address rewriting. What
// differs per slot is HostIP, the VM's unique address: guest traffic leaves
// the slot with that source (SNAT), the host reaches the guest through it
// (DNAT), and the host masquerades it out of the egress interface.
//
// # Address plan and names
//
// Config.Pool (default 10.200.0.0/16) is cut into aligned blocks of four
// addresses, one per slot: B is the host end of the veth pair, B+1 the
// namespace end (a /31 link), B+2 the HostIP, B+3 unused. A /16 gives
// 16384 slots.
//
// A slot is named <prefix>-<HostIP in 8 hex digits>, e.g. "mvm-0ac80002"
// for 10.200.0.2. The name is the host-side veth (at most 6+1+8 = 15
// bytes, within IFNAMSIZ), the namespace file and the lease id, so a
// leftover is recognisable without any record, and two slots cannot share
// a name unless they share an address, which the lease forbids. Inside a
// namespace the names are fixed (tap0, veth0).
//
// # Where namespaces live
//
// Namespaces are pinned by bind mounts under Config.RunDir (default
// /run/mvm/netns), not /var/run/netns: `ip netns` users and tools that
// sweep /var/run/netns do not see or delete them, and Cleanup owns every
// file there that carries the prefix. Like iproute2, New makes RunDir a
// shared mount point so that unmounting a namespace also drops the copies
// in mount namespaces created later by other processes (which would keep
// the namespace alive). To inspect one: nsenter --net=/run/mvm/netns/<name>.
//
// # Persistence
//
// Records go to the Store (*registry.Registry satisfies it):
//
//	netlease/<name>   {name, host_ip, token, state: building|built, owner{pid,start,instance}, built_for, created}
//	netvm/<vm id>     {slot, token, policy, tap_uid, tap_gid}
//
// A lease reserves an address. It is created, under the Store lock
// "netalloc-<prefix>", before any kernel object, and deleted after the
// last one is gone. A VM has a slot when its netvm record names the lease
// and carries the lease's random token (a stale record never matches a
// later lease of the same address). Claiming a warm slot is therefore one
// atomic Store write. Operations on one VM hold the lock "netvm-<vm id>".
// The owner of a lease is the Manager that built it: a process (pid and
// start time, so a reused pid does not count) and a Manager instance in it.
//
// # Firewall
//
// Each slot's namespace has a table "inet <prefix>_fw" that filters what
// the guest sends (packets entering from tap0): replies to flows the host
// opened are let out; anything not IPv4, or not from GuestIP, is dropped;
// then the Policy's Allow rules accept; then either everything (DenyAll)
// or the deny set (DefaultDenied, the host namespace's addresses at set-up
// or policy time, and the pool, i.e. the other VMs) is dropped; the rest is
// accepted. Every packet the guest originates is checked, not only the
// first of a flow, so a policy change also cuts established flows.
// SetPolicy refills the rules and sets in one transaction. The host table
// additionally drops any forwarded packet that would open a flow towards a
// slot, so VMs cannot reach each other even if their policies allow the
// pool, and nothing beyond the host reaches a guest unasked. The tables live
// and die with the namespace.
//
// # Warm pool
//
// With Config.PoolSize > 0, a goroutine started by New (not tied to any
// request) keeps that many slots built with the default policy. Setup takes
// one, applies the VM's options if they are not the defaults, and writes
// the netvm record: the cost is one Store write. Close stops the goroutine
// and removes the warm slots; those of a process that died are removed by
// Cleanup.
//
// # Failures and recovery
//
// Set-up is a sequence of idempotent steps (lease, record, namespace,
// sysctls, TAP, veth, routes, NAT, firewall). A failing step rolls back
// what was made; a crash leaves a lease whose owner is dead, which Cleanup
// removes together with its namespace and veth, or, if a VM record holds it
// and keep accepts the VM, finishes building. Cleanup also removes
// namespaces and links that carry the prefix but have no lease, stale vm
// records, and the slots of VMs that keep rejects, and rebuilds damaged
// slots of kept VMs in place. Teardown tolerates a namespace or link that
// was deleted behind its back.
//
// # Running Firecracker in a slot
//
// Start Firecracker from Slot.Do, which runs a function on an OS thread
// switched into the slot's namespace; the child process inherits it.
// Configure the network interface with host_dev_name Slot.TAPName and
// guest_mac Slot.GuestMAC, and add Slot.BootArg to the kernel command line
// (or give Slot.Metadata to the guest through MMDS). With a jailer, pass
// Slot.NetNSPath as --netns and Options.TAPUID/TAPGID as its uid and gid.
//
// # Limits
//
// IPv4 only (IPv6 from the guest is dropped). No DNS: give the guest a
// resolver address and allow it if it is in a denied range. The host
// addresses in the deny set are read when a slot is built or its policy
// set. Packets towards VMs are forwarded by this package's rules only; a
// host firewall that drops forwarded traffic by default (Docker sets the
// iptables FORWARD policy to DROP) must let the pool through. Cleanup
// decides whether a lease's owner is alive from /proc, so Managers sharing
// a Store must share a PID namespace. Linux only; root (CAP_NET_ADMIN and
// CAP_SYS_ADMIN) is required.
package network
