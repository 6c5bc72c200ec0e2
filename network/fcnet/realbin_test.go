//go:build linux

package fcnet_test

import (
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/realfc"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
)

// TestRealBinaries runs managed networking through the runtime with each
// real Firecracker build: the real firecracker is spawned in the slot's
// namespace and opens the slot's TAP; its configuration holds the managed
// interface, the ip= boot argument and MMDS with the network's facts
// merged into the spec's data; Start fails cleanly without KVM and keeps
// the network; a killed firecracker keeps the VM (and its slot) until
// Destroy; another runtime adopts the VM; Destroy leaves nothing (checked
// by the world's cleanup).
func TestRealBinaries(t *testing.T) {
	for _, b := range realfc.Binaries(t) {
		t.Run(b.Name(), func(t *testing.T) {
			w := newWorldBin(t, 0, b.Path)
			ctx := ctxT(t)
			spec := testSpec(t)
			spec.Kernel = realfc.Kernel(t)
			spec.MemoryMiB = 128
			spec.MMDS = &microvm.MMDS{Version: "V1", Data: json.RawMessage(`{"app":{"role":"db"}}`)}
			vm, err := w.rt.Create(ctx, "real", spec)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			n := vm.Backend.Network
			if n == nil || n.TAP != network.TAPName {
				t.Fatalf("Backend.Network = %+v", n)
			}
			sameNetNS(t, vm.Backend.PID, n.NetNS)
			if !realfc.TAPOpenBy(vm.Backend.PID, network.TAPName) {
				t.Errorf("firecracker (pid %d) holds no TAP file of %s", vm.Backend.PID, network.TAPName)
			}
			cfg := vmConfig(t, vm)
			if len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != network.TAPName ||
				!strings.EqualFold(cfg.NetworkInterfaces[0].GuestMAC, network.GuestMAC) {
				t.Errorf("network interfaces = %+v", cfg.NetworkInterfaces)
			}
			if cfg.BootSource == nil || !strings.Contains(cfg.BootSource.BootArgs, " ip="+network.GuestIP.String()+"::") {
				t.Errorf("boot args = %+v, want the managed interface's ip=", cfg.BootSource)
			}
			if cfg.MMDSConfig == nil || cfg.MMDSConfig.Version != "V1" {
				t.Errorf("mmds-config = %+v, want the spec's V1", cfg.MMDSConfig)
			}
			checkFacts(t, vm, n.HostIP)
			var data struct {
				App map[string]string `json:"app"`
			}
			if err := client(t, vm).MMDS(ctx, &data); err != nil || data.App["role"] != "db" {
				t.Errorf("GET /mmds: app = %v, %v; want the spec's data kept", data.App, err)
			}

			if !realfc.KVM() {
				_, err := w.rt.Start(ctx, "real")
				var be *microvm.BackendError
				if !errors.As(err, &be) || be.Op != "boot" {
					t.Errorf("Start without KVM: %v, want a BackendError of the boot step", err)
				}
				if got, _ := w.rt.Get(ctx, "real"); got.Status != microvm.StatusCreated || got.Backend.Network == nil || got.Backend.Network.NetNS != n.NetNS {
					t.Errorf("after a failed Start: %s, network %+v; want created, the same slot", got.Status, got.Backend.Network)
				}
			}

			// A second VM, killed while created: it keeps its slot until
			// Destroy; another runtime adopts the first.
			vm2, err := w.rt.Create(ctx, "real2", testSpecReal(t))
			if err != nil {
				t.Fatalf("Create real2: %v", err)
			}
			if err := syscall.Kill(vm2.Backend.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				got, err := w.rt.Get(ctx, "real2")
				if err != nil {
					t.Fatal(err)
				}
				if got.Backend.PID == 0 {
					if got.Status != microvm.StatusCreated || got.LastError == "" || got.Backend.Network == nil {
						t.Errorf("killed created VM: %s, LastError %q, network %+v", got.Status, got.LastError, got.Backend.Network)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the killed firecracker is still reported after 5s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			before, err := w.rt.Get(ctx, "real") // v1.0's process died in the failed Start
			if err != nil {
				t.Fatal(err)
			}
			if err := w.rt.Close(); err != nil {
				t.Fatal(err)
			}
			w.rt = w.open(fcnet.New(w.m))
			if got, err := w.rt.Get(ctx, "real"); err != nil || got.Backend.PID != before.Backend.PID || got.Status != microvm.StatusCreated {
				t.Errorf("after reopening: %s pid %d, %v; want created, pid %d", got.Status, got.Backend.PID, err, before.Backend.PID)
			}
			// The world's cleanup destroys both and checks nothing is left.
		})
	}
}

// testSpecReal is testSpec booting the real guest kernel.
func testSpecReal(t *testing.T) microvm.Spec {
	s := testSpec(t)
	s.Kernel = realfc.Kernel(t)
	s.MemoryMiB = 128
	return s
}
