package fcnet_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
)

// Example wires managed networking into the Firecracker runtime: every VM
// with a managed interface gets its own network namespace, TAP, NAT to a
// unique host address and an egress firewall, and the policy can change
// while the VM runs. (It needs root, nftables, a firecracker binary and
// guest images, so it is compiled but not run by go test.)
func Example() {
	ctx := context.Background()
	leases, err := network.OpenStore("/var/lib/mvm/network")
	if err != nil {
		log.Fatal(err)
	}
	defer leases.Close()
	nets, err := network.New(ctx, network.Config{
		Store:           leases,
		EgressInterface: "eth0",
		PoolSize:        4, // keep four namespaces ready: the network step of Create takes ~1-3 ms
	})
	if err != nil {
		log.Fatal(err)
	}
	defer nets.Close()

	rt, err := firecracker.Open(ctx, firecracker.Config{
		StateDir: "/var/lib/mvm",
		Network:  fcnet.New(nets),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close()

	vm, err := rt.Create(ctx, "sandbox-1", microvm.Spec{
		Kernel:    "/images/vmlinux",
		RootDrive: microvm.Drive{Path: "/images/rootfs.ext4"},
		VCPUs:     1,
		MemoryMiB: 256,
		// One managed interface (no host_dev_name): the internet is
		// allowed; the host, private ranges and other VMs are not.
		Network: []microvm.NetworkInterface{{}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("guest", vm.Backend.Network.GuestIP, "reachable from the host at", vm.Backend.Network.HostIP)
	if _, err := rt.Start(ctx, vm.ID); err != nil {
		log.Fatal(err)
	}
	// Lock it down to one API, live.
	_, err = rt.SetEgressPolicy(ctx, vm.ID, &microvm.EgressPolicy{
		DenyAll: true,
		Allow:   []microvm.EgressRule{{CIDR: netip.MustParsePrefix("203.0.113.10/32"), Protocol: "tcp", FromPort: 443}},
	})
	if err != nil {
		log.Fatal(err)
	}
}
