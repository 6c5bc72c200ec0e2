package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
)

// ---------------------------------------------------------------------------
// Transitions

// testTransitions builds a VM in every status and tries every operation on
// it, comparing the outcome with microvm.Transition.
func (s *suite) testTransitions(t *testing.T) {
	e := s.env(t)
	for _, st := range microvm.Statuses() {
		t.Run(string(st), func(t *testing.T) {
			if st == microvm.StatusFailed && s.h.Crash == nil {
				t.Skip("Harness.Crash is not set: the suite cannot make a VM fail")
			}
			if st != microvm.StatusCreated && st != microvm.StatusDestroyed {
				s.needBoot(t)
			}
			ids := make([]string, len(lifecycleOps))
			for i, op := range lifecycleOps {
				ids[i] = fmt.Sprintf("tr-%s-%s", st, op)
			}
			pre := st
			if st == microvm.StatusFailed {
				pre = microvm.StatusRunning
			}
			var mu sync.Mutex
			var errs []error
			s.parallel(len(ids), func(i int) {
				if err := e.build(t.Context(), ids[i], pre); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if st == microvm.StatusFailed {
				for _, id := range ids {
					s.h.Crash(t, e.rt, id)
				}
				for _, id := range ids {
					e.waitFailed(t, id)
				}
			}
			for i, op := range lifecycleOps {
				t.Run(string(op), func(t *testing.T) { e.checkTransition(t, ids[i], st, op) })
			}
		})
	}
}

// checkTransition applies op to the VM id, which is in status from, and
// checks the outcome against the table.
func (e *env) checkTransition(t *testing.T, id string, from microvm.Status, op microvm.Op) {
	want, refusal := microvm.Transition(id, from, op)
	if e.s.h.NoBoot && op == microvm.OpStart && from == microvm.StatusCreated {
		e.checkStartFails(t, id)
		return
	}
	snapID := "snap-" + id
	got, err := e.do(t.Context(), id, op, snapID)
	switch {
	case from == microvm.StatusDestroyed:
		// Destroy removed the record: the table refuses every operation,
		// and the runtime reports the VM as not found.
		wantErr(t, fmt.Sprintf("%s of destroyed VM %q", op, id), err, microvm.ErrNotFound)
		e.wantGone(t, id)

	case refusal == nil:
		if err != nil {
			t.Fatalf("%s of %s VM %q: %v; the table allows %s -> %s", op, from, id, err, from, want)
		}
		if got.ID != id || got.Status != want {
			t.Errorf("%s of %s VM %q returned VM %q with status %s, want status %s", op, from, id, got.ID, got.Status, want)
		}
		if op == microvm.OpDestroy {
			e.wantGone(t, id)
			return
		}
		e.wantStatus(t, id, want)
		if op == microvm.OpSnapshot {
			if ids := e.snapshotIDs(t, id); !slices.Contains(ids, snapID) {
				t.Errorf("Snapshots(%q) = %q after Snapshot, want it to list %q", id, ids, snapID)
			}
			if vm := e.get(t, id); !slices.Contains(vm.Snapshots, snapID) {
				t.Errorf("Get(%q).Snapshots = %q after Snapshot, want it to list %q", id, vm.Snapshots, snapID)
			}
		}

	default:
		if err == nil {
			t.Fatalf("%s of %s VM %q succeeded (status %s); the table refuses it: %v", op, from, id, got.Status, refusal)
		}
		var te *microvm.TransitionError
		if !errors.As(err, &te) {
			t.Errorf("%s of %s VM %q: got error %v, want a *microvm.TransitionError", op, from, id, err)
		} else if te.ID != id || te.From != from || te.Op != op {
			t.Errorf("%s of %s VM %q: TransitionError{ID: %q, From: %s, Op: %s}, want {ID: %q, From: %s, Op: %s}",
				op, from, id, te.ID, te.From, te.Op, id, from, op)
		}
		wantErr(t, fmt.Sprintf("%s of %s VM %q", op, from, id), err, microvm.ErrInvalidTransition)
		e.wantStatus(t, id, from)
		if op == microvm.OpSnapshot {
			if ids := e.snapshotIDs(t, ""); slices.Contains(ids, snapID) {
				t.Errorf("refused Snapshot of %s VM %q left snapshot %q behind", from, id, snapID)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Create

func (s *suite) testCreate(t *testing.T) {
	e := s.env(t)

	t.Run("Returns", func(t *testing.T) {
		before := time.Now().Add(-time.Minute)
		vm := e.create(t, "cr-returns")
		if vm.ID != "cr-returns" || vm.Status != microvm.StatusCreated {
			t.Errorf("Create returned VM %q with status %s, want %q created", vm.ID, vm.Status, "cr-returns")
		}
		if vm.CreatedAt.Before(before) || vm.UpdatedAt.Before(vm.CreatedAt) {
			t.Errorf("Create: CreatedAt %v, UpdatedAt %v; want a current CreatedAt and UpdatedAt >= CreatedAt", vm.CreatedAt, vm.UpdatedAt)
		}
		if vm.Backend.Runtime == "" {
			t.Errorf("Create: Backend.Runtime is empty, want the runtime's name")
		}
		if vm.RestoredFrom != "" || len(vm.Snapshots) != 0 || vm.LastError != "" {
			t.Errorf("Create: new VM has RestoredFrom %q, Snapshots %q, LastError %q; want none", vm.RestoredFrom, vm.Snapshots, vm.LastError)
		}
	})

	t.Run("Twice", func(t *testing.T) {
		e.create(t, "cr-twice")
		other := e.spec.Clone()
		other.Labels = map[string]string{"second": "yes"}
		_, err := e.rt.Create(t.Context(), "cr-twice", other)
		wantErr(t, `second Create("cr-twice")`, err, microvm.ErrAlreadyExists)
		vm := e.get(t, "cr-twice")
		if vm.Status != microvm.StatusCreated {
			t.Errorf("status after a refused second Create: %s, want created", vm.Status)
		}
		wantSpec(t, "spec after a refused second Create", vm.Spec, e.spec.WithDefaults())
		// Also from running: the id is taken whatever the status.
		s.needBoot(t)
		e.make(t, "cr-twice-run", microvm.StatusRunning)
		_, err = e.rt.Create(t.Context(), "cr-twice-run", e.spec.Clone())
		wantErr(t, `Create("cr-twice-run") of a running VM's id`, err, microvm.ErrAlreadyExists)
		e.wantStatus(t, "cr-twice-run", microvm.StatusRunning)
	})

	t.Run("InvalidSpec", func(t *testing.T) {
		before := e.listIDs(t)
		for i, c := range badSpecs(e.spec) {
			t.Run(c.name, func(t *testing.T) {
				id := fmt.Sprintf("cr-bad-%d", i)
				spec := e.spec.Clone()
				c.mutate(&spec)
				_, err := e.rt.Create(t.Context(), id, spec)
				if !wantErr(t, "Create with "+c.name, err, microvm.ErrInvalidSpec) {
					return
				}
				var se *microvm.SpecError
				if !errors.As(err, &se) {
					t.Fatalf("Create with %s: error %v is not a *microvm.SpecError", c.name, err)
				}
				for _, f := range c.fields {
					if !se.Has(f) {
						t.Errorf("Create with %s: SpecError does not name field %q: %v", c.name, f, se)
					}
				}
				e.wantGone(t, id)
			})
		}
		if after := e.listIDs(t); !slices.Equal(before, after) {
			t.Errorf("List changed across refused Creates: before %q, after %q", before, after)
		}
	})

	t.Run("SpecRoundTrip", func(t *testing.T) {
		spec := richSpec(e.spec)
		want := spec.WithDefaults()
		vm, err := e.rt.Create(t.Context(), "cr-spec", spec)
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		wantSpec(t, "spec returned by Create (want the defaulted spec)", vm.Spec, want)
		wantSpec(t, "spec returned by Get (want the defaulted spec)", e.get(t, "cr-spec").Spec, want)
		vms, err := e.rt.List(t.Context())
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, v := range vms {
			if v.ID == "cr-spec" {
				wantSpec(t, "spec returned by List", v.Spec, want)
			}
		}
	})

	t.Run("CopiesInAndOut", func(t *testing.T) {
		spec := richSpec(e.spec)
		want := spec.WithDefaults()
		vm, err := e.rt.Create(t.Context(), "cr-copies", spec)
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		// Change the caller's spec and every returned view.
		mutateSpec(&spec)
		mutateSpec(&vm.Spec)
		vm.Snapshots = append(vm.Snapshots, "not-a-snapshot")
		got := e.get(t, "cr-copies")
		mutateSpec(&got.Spec)
		wantSpec(t, "spec after changing the caller's spec and the returned views", e.get(t, "cr-copies").Spec, want)
		if snaps := e.get(t, "cr-copies").Snapshots; len(snaps) != 0 {
			t.Errorf("Snapshots = %q after changing a returned view, want none", snaps)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := e.rt.Create(ctx, "cr-canceled", e.spec.Clone())
		wantErr(t, "Create with a canceled context", err, context.Canceled)
		e.wantGone(t, "cr-canceled")
	})
}

type badSpec struct {
	name   string
	mutate func(*microvm.Spec)
	fields []string // the fields the SpecError must name
}

// badSpecs returns specs that break one rule each (or several, where
// named), derived from the valid spec base. Extra drives reuse the root
// drive's file so that only the rule under test is broken.
func badSpecs(base microvm.Spec) []badSpec {
	root := base.RootDrive.Path
	rootID := base.WithDefaults().RootDrive.ID
	unmanaged := func(mac string) []microvm.NetworkInterface {
		return []microvm.NetworkInterface{{HostDevName: "tap0", GuestMAC: mac}}
	}
	egress := func(r microvm.EgressRule) []microvm.NetworkInterface {
		return []microvm.NetworkInterface{{Egress: &microvm.EgressPolicy{Allow: []microvm.EgressRule{r}}}}
	}
	cases := []badSpec{
		{"zero vcpus", func(s *microvm.Spec) { s.VCPUs = 0 }, []string{"vcpus"}},
		{"33 vcpus", func(s *microvm.Spec) { s.VCPUs = 33 }, []string{"vcpus"}},
		{"odd vcpus with smt", func(s *microvm.Spec) { s.VCPUs, s.SMT = 3, true }, []string{"vcpus"}},
		{"zero memory", func(s *microvm.Spec) { s.MemoryMiB = 0 }, []string{"memory_mib"}},
		{"negative memory", func(s *microvm.Spec) { s.MemoryMiB = -1 }, []string{"memory_mib"}},
		{"odd memory with 2M huge pages", func(s *microvm.Spec) { s.MemoryMiB, s.HugePages = 129, microvm.HugePages2M }, []string{"memory_mib"}},
		{"unknown huge pages", func(s *microvm.Spec) { s.HugePages = "1G" }, []string{"huge_pages"}},
		{"missing kernel", func(s *microvm.Spec) { s.Kernel = "" }, []string{"kernel"}},
		{"NUL in kernel path", func(s *microvm.Spec) { s.Kernel = "/boot/vm\x00linux" }, []string{"kernel"}},
		{"missing root drive path", func(s *microvm.Spec) { s.RootDrive.Path = "" }, []string{"root_drive.path"}},
		{"bad root drive id", func(s *microvm.Spec) { s.RootDrive.ID = "root-fs" }, []string{"root_drive.id"}},
		{"duplicate drive ids", func(s *microvm.Spec) {
			s.Drives = []microvm.Drive{{ID: "data", Path: root, ReadOnly: true}, {ID: "data", Path: root, ReadOnly: true}}
		}, []string{"drives[1].id"}},
		{"drive id of the root drive", func(s *microvm.Spec) {
			s.Drives = []microvm.Drive{{ID: rootID, Path: root, ReadOnly: true}}
		}, []string{"drives[0].id"}},
		{"missing drive path", func(s *microvm.Spec) { s.Drives = []microvm.Drive{{ID: "data"}} }, []string{"drives[0].path"}},
		{"newline in boot args", func(s *microvm.Spec) { s.BootArgs = "console=ttyS0\ninit=/bin/sh" }, []string{"boot_args"}},
		{"boot args too long", func(s *microvm.Spec) { s.BootArgs = strings.Repeat("a", microvm.MaxBootArgsLen+1) }, []string{"boot_args"}},
		{"bad MAC", func(s *microvm.Spec) { s.Network = unmanaged("02:00:00:00:00:zz") }, []string{"network[0].guest_mac"}},
		{"MAC with a space", func(s *microvm.Spec) { s.Network = unmanaged(" 2:00:00:00:00:01") }, []string{"network[0].guest_mac"}},
		{"multicast MAC", func(s *microvm.Spec) { s.Network = unmanaged("03:00:00:00:00:01") }, []string{"network[0].guest_mac"}},
		{"bad host device name", func(s *microvm.Spec) {
			s.Network = []microvm.NetworkInterface{{HostDevName: "tap/0"}}
		}, []string{"network[0].host_dev_name"}},
		{"two managed interfaces", func(s *microvm.Spec) {
			s.Network = []microvm.NetworkInterface{{}, {}}
		}, []string{"network[1].host_dev_name"}},
		{"duplicate interface ids", func(s *microvm.Spec) {
			s.Network = []microvm.NetworkInterface{{ID: "eth0", HostDevName: "tap0"}, {ID: "eth0", HostDevName: "tap1"}}
		}, []string{"network[1].id"}},
		{"egress on an unmanaged interface", func(s *microvm.Spec) {
			s.Network = []microvm.NetworkInterface{{HostDevName: "tap0", Egress: &microvm.EgressPolicy{DenyAll: true}}}
		}, []string{"network[0].egress"}},
		{"missing egress CIDR", func(s *microvm.Spec) { s.Network = egress(microvm.EgressRule{}) }, []string{"network[0].egress.allow[0].cidr"}},
		{"egress CIDR with host bits", func(s *microvm.Spec) {
			s.Network = egress(microvm.EgressRule{CIDR: netip.MustParsePrefix("10.1.2.3/8")})
		}, []string{"network[0].egress.allow[0].cidr"}},
		{"bad egress protocol", func(s *microvm.Spec) {
			s.Network = egress(microvm.EgressRule{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Protocol: "sctp"})
		}, []string{"network[0].egress.allow[0].protocol"}},
		{"egress ports without protocol", func(s *microvm.Spec) {
			s.Network = egress(microvm.EgressRule{CIDR: netip.MustParsePrefix("0.0.0.0/0"), FromPort: 80})
		}, []string{"network[0].egress.allow[0].from_port"}},
		{"vsock cid below 3", func(s *microvm.Spec) { s.Vsock = &microvm.Vsock{CID: 2} }, []string{"vsock.cid"}},
		{"bad mmds version", func(s *microvm.Spec) {
			s.Network = unmanaged("")
			s.MMDS = &microvm.MMDS{Version: "V3"}
		}, []string{"mmds.version"}},
		{"mmds without interfaces", func(s *microvm.Spec) { s.Network, s.MMDS = nil, &microvm.MMDS{} }, []string{"mmds.interfaces"}},
		{"mmds address not link-local", func(s *microvm.Spec) {
			s.Network = unmanaged("")
			s.MMDS = &microvm.MMDS{Address: "10.0.0.1"}
		}, []string{"mmds.address"}},
		{"mmds data not an object", func(s *microvm.Spec) {
			s.Network = unmanaged("")
			s.MMDS = &microvm.MMDS{Data: json.RawMessage(`[1]`)}
		}, []string{"mmds.data"}},
		{"mmds data null", func(s *microvm.Spec) {
			s.Network = unmanaged("")
			s.MMDS = &microvm.MMDS{Data: json.RawMessage(`null`)}
		}, []string{"mmds.data"}},
		{"negative rate limit", func(s *microvm.Spec) {
			s.RootDrive.RateLimiter = &microvm.RateLimiter{Bandwidth: &microvm.TokenBucket{Size: -1}}
		}, []string{"root_drive.rate_limiter.bandwidth.size"}},
		{"refill time not whole milliseconds", func(s *microvm.Spec) {
			s.RootDrive.RateLimiter = &microvm.RateLimiter{Ops: &microvm.TokenBucket{Size: 10, RefillTime: 1500 * time.Microsecond}}
		}, []string{"root_drive.rate_limiter.ops.refill_time"}},
		{"too many labels", func(s *microvm.Spec) {
			s.Labels = map[string]string{}
			for i := range 65 {
				s.Labels[fmt.Sprint("k", i)] = "v"
			}
		}, []string{"labels"}},
		{"several problems at once", func(s *microvm.Spec) { s.VCPUs, s.MemoryMiB, s.Kernel = 0, 0, "" },
			[]string{"vcpus", "memory_mib", "kernel"}},
	}
	if runtime.GOOS == "linux" { // the host's memory is known there
		cases = append(cases, badSpec{"memory beyond the host", func(s *microvm.Spec) { s.MemoryMiB = 1 << 40 }, []string{"memory_mib"}})
	}
	return cases
}

// richSpec returns base with extra drives, labels, a rate limiter and
// dirty-page tracking, and with the fields that have defaults left empty.
func richSpec(base microvm.Spec) microvm.Spec {
	s := base.Clone()
	s.BootArgs = ""
	s.RootDrive.ID = ""
	s.RootDrive.RateLimiter = &microvm.RateLimiter{Bandwidth: &microvm.TokenBucket{Size: 1 << 20, RefillTime: 100 * time.Millisecond}}
	// An extra read-only drive of another file (one image behind a
	// writable and a read-only drive of a VM is refused).
	s.Drives = append(s.Drives, microvm.Drive{Path: base.Kernel, ReadOnly: true})
	s.TrackDirtyPages = true
	s.Labels = map[string]string{"app": "web", "tier": "1"}
	return s
}

// mutateSpec changes every reference field of a spec made by richSpec.
func mutateSpec(s *microvm.Spec) {
	if s.Labels != nil {
		s.Labels["app"] = "changed"
		s.Labels["added"] = "yes"
	}
	if len(s.Drives) > 0 {
		s.Drives[len(s.Drives)-1].Path = "/changed"
		s.Drives[len(s.Drives)-1].ReadOnly = false
	}
	if rl := s.RootDrive.RateLimiter; rl != nil && rl.Bandwidth != nil {
		rl.Bandwidth.Size = 1
	}
	s.VCPUs++
}

// ---------------------------------------------------------------------------
// IDs

type badID struct{ name, id string }

var badIDs = []badID{
	{"empty", ""},
	{"leading-dash", "-a"},
	{"underscore", "a_b"},
	{"slash", "a/b"},
	{"dot-dot", "../x"},
	{"dot", "."},
	{"65-chars", strings.Repeat("a", microvm.MaxIDLen+1)},
	{"non-ASCII", "é"},
	{"space", "a b"},
	{"newline", "a\n"},
	{"NUL", "a\x00b"},
}

func (s *suite) testIDs(t *testing.T) {
	e := s.env(t)
	e.make(t, "id-vm", s.live())
	if !s.h.NoBoot {
		e.snapshot(t, "id-vm", "id-snap")
	}

	t.Run("UnknownVM", func(t *testing.T) {
		const id = "no-such-vm"
		ctx := t.Context()
		for _, c := range []struct {
			name string
			call func() error
		}{
			{"Start", func() error { _, err := e.rt.Start(ctx, id); return err }},
			{"Stop", func() error { _, err := e.rt.Stop(ctx, id, nil); return err }},
			{"Pause", func() error { _, err := e.rt.Pause(ctx, id); return err }},
			{"Resume", func() error { _, err := e.rt.Resume(ctx, id); return err }},
			{"Snapshot", func() error { _, err := e.rt.Snapshot(ctx, id, "no-such-vm-snap", nil); return err }},
			{"Destroy", func() error { _, err := e.rt.Destroy(ctx, id); return err }},
			{"Get", func() error { _, err := e.rt.Get(ctx, id); return err }},
			{"Logs", func() error { _, err := e.rt.Logs(ctx, id, 0); return err }},
		} {
			wantErr(t, c.name+"(unknown VM)", c.call(), microvm.ErrNotFound)
		}
		if ids := e.snapshotIDs(t, ""); slices.Contains(ids, "no-such-vm-snap") {
			t.Errorf("Snapshot of an unknown VM left snapshot %q behind", "no-such-vm-snap")
		}
		if snaps, err := e.rt.Snapshots(ctx, id); err != nil || len(snaps) != 0 {
			t.Errorf("Snapshots(unknown VM) = %d snapshots, %v; want none and no error (snapshots outlive VMs)", len(snaps), err)
		}
	})

	t.Run("UnknownSnapshot", func(t *testing.T) {
		_, err := e.rt.Restore(t.Context(), "id-restored", "no-such-snap", nil)
		wantErr(t, "Restore(unknown snapshot)", err, microvm.ErrSnapshotNotFound)
		e.wantGone(t, "id-restored")
		err = e.rt.DeleteSnapshot(t.Context(), "no-such-snap", nil)
		wantErr(t, "DeleteSnapshot(unknown snapshot)", err, microvm.ErrSnapshotNotFound)
	})

	t.Run("Invalid", func(t *testing.T) {
		beforeVMs, beforeSnaps := e.listIDs(t), e.snapshotIDs(t, "")
		for _, b := range badIDs {
			t.Run(b.name, func(t *testing.T) { e.checkBadID(t, b.id) })
		}
		if after := e.listIDs(t); !slices.Equal(beforeVMs, after) {
			t.Errorf("List changed across calls with invalid ids: before %q, after %q", beforeVMs, after)
		}
		if after := e.snapshotIDs(t, ""); !slices.Equal(beforeSnaps, after) {
			t.Errorf("Snapshots changed across calls with invalid ids: before %q, after %q", beforeSnaps, after)
		}
		e.wantStatus(t, "id-vm", s.live())
	})

	t.Run("MaxLength", func(t *testing.T) {
		vmID := strings.Repeat("v", microvm.MaxIDLen)
		snapID := strings.Repeat("s", microvm.MaxIDLen)
		newID := strings.Repeat("r", microvm.MaxIDLen)
		e.make(t, vmID, s.live())
		if s.h.NoBoot {
			if _, err := e.rt.Destroy(t.Context(), vmID); err != nil {
				t.Errorf("Destroy of a VM with a %d-character id: %v", microvm.MaxIDLen, err)
			}
			return
		}
		e.snapshot(t, vmID, snapID)
		vm, err := e.rt.Restore(t.Context(), newID, snapID, nil)
		if err != nil {
			t.Fatalf("Restore with %d-character ids: %v", microvm.MaxIDLen, err)
		}
		if vm.Status != microvm.StatusRunning {
			t.Errorf("restored VM is %s, want running", vm.Status)
		}
		for _, id := range []string{vmID, newID} {
			if _, err := e.rt.Destroy(t.Context(), id); err != nil {
				t.Errorf("Destroy of a VM with a %d-character id: %v", microvm.MaxIDLen, err)
			}
		}
		if err := e.rt.DeleteSnapshot(t.Context(), snapID, nil); err != nil {
			t.Errorf("DeleteSnapshot of a snapshot with a %d-character id: %v", microvm.MaxIDLen, err)
		}
	})
}

// checkBadID calls every method that takes an id with bad, in each id
// position, and wants ErrInvalidID and an *IDError.
func (e *env) checkBadID(t *testing.T, bad string) {
	ctx := t.Context()
	type call struct {
		name string
		call func() error
	}
	calls := []call{
		{"Create", func() error { _, err := e.rt.Create(ctx, bad, e.spec.Clone()); return err }},
		{"Start", func() error { _, err := e.rt.Start(ctx, bad); return err }},
		{"Stop", func() error { _, err := e.rt.Stop(ctx, bad, nil); return err }},
		{"Pause", func() error { _, err := e.rt.Pause(ctx, bad); return err }},
		{"Resume", func() error { _, err := e.rt.Resume(ctx, bad); return err }},
		{"Snapshot(vm id)", func() error { _, err := e.rt.Snapshot(ctx, bad, "id-ok-snap", nil); return err }},
		{"Snapshot(snapshot id)", func() error { _, err := e.rt.Snapshot(ctx, "id-vm", bad, nil); return err }},
		{"Restore(new id)", func() error { _, err := e.rt.Restore(ctx, bad, "id-snap", nil); return err }},
		{"Restore(snapshot id)", func() error { _, err := e.rt.Restore(ctx, "id-ok-vm", bad, nil); return err }},
		{"Destroy", func() error { _, err := e.rt.Destroy(ctx, bad); return err }},
		{"Get", func() error { _, err := e.rt.Get(ctx, bad); return err }},
		{"Logs", func() error { _, err := e.rt.Logs(ctx, bad, 0); return err }},
		{"DeleteSnapshot", func() error { return e.rt.DeleteSnapshot(ctx, bad, nil) }},
	}
	if bad != "" { // "" means "all VMs" and "the default parent"
		calls = append(calls,
			call{"Snapshots", func() error { _, err := e.rt.Snapshots(ctx, bad); return err }},
			call{"Snapshot(diff parent)", func() error {
				_, err := e.rt.Snapshot(ctx, "id-vm", "id-ok-snap", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff, Parent: bad})
				return err
			}},
		)
	}
	for _, c := range calls {
		err := c.call()
		if !wantErr(t, fmt.Sprintf("%s with id %q", c.name, bad), err, microvm.ErrInvalidID) {
			continue
		}
		var ie *microvm.IDError
		if !errors.As(err, &ie) {
			t.Errorf("%s with id %q: error %v is not a *microvm.IDError", c.name, bad, err)
		} else if ie.ID != bad {
			t.Errorf("%s with id %q: IDError names id %q", c.name, bad, ie.ID)
		}
	}
}

// ---------------------------------------------------------------------------
// Options

func (s *suite) testOptions(t *testing.T) {
	e := s.env(t)
	e.make(t, "opt-vm", s.live())

	t.Run("NegativeStopTimeout", func(t *testing.T) {
		s.needBoot(t) // Stop of a created VM is refused as a transition first
		_, err := e.rt.Stop(t.Context(), "opt-vm", &microvm.StopOptions{Timeout: -time.Second})
		wantErr(t, "Stop with a negative timeout", err, microvm.ErrInvalidArgument)
		e.wantStatus(t, "opt-vm", microvm.StatusRunning)
	})

	t.Run("InvalidSnapshotOptions", func(t *testing.T) {
		for _, c := range []struct {
			name string
			opts microvm.SnapshotOptions
		}{
			{"unknown type", microvm.SnapshotOptions{Type: "incremental"}},
			{"parent of a full snapshot", microvm.SnapshotOptions{Type: microvm.SnapshotFull, Parent: "opt-parent"}},
		} {
			_, err := e.rt.Snapshot(t.Context(), "opt-vm", "opt-snap", &c.opts)
			wantErr(t, "Snapshot with "+c.name, err, microvm.ErrInvalidArgument)
		}
		if ids := e.snapshotIDs(t, ""); slices.Contains(ids, "opt-snap") {
			t.Errorf("a refused Snapshot left snapshot %q behind", "opt-snap")
		}
		e.wantStatus(t, "opt-vm", s.live())
	})

	t.Run("InvalidRestoreOptions", func(t *testing.T) {
		s.needBoot(t)
		e.snapshot(t, "opt-vm", "opt-restore-snap")
		for _, c := range []struct {
			name string
			opts microvm.RestoreOptions
		}{
			{"unknown memory backend", microvm.RestoreOptions{MemoryBackend: "floppy"}},
			{"a label with an empty key", microvm.RestoreOptions{Labels: map[string]string{"": "x"}}},
		} {
			_, err := e.rt.Restore(t.Context(), "opt-restored", "opt-restore-snap", &c.opts)
			wantErr(t, "Restore with "+c.name, err, microvm.ErrInvalidArgument)
			e.wantGone(t, "opt-restored")
		}
	})
}

// ---------------------------------------------------------------------------
// List

func (s *suite) testList(t *testing.T) {
	e := s.env(t)

	t.Run("SortedByID", func(t *testing.T) {
		if ids := e.listIDs(t); len(ids) != 0 {
			t.Fatalf("List of a fresh runtime = %q, want none", ids)
		}
		created := []string{"l-b", "l-a", "l-c", "l-a1", "l-B", "l-0"}
		for _, id := range created {
			e.create(t, id)
		}
		e.make(t, "l-run", s.live())
		created = append(created, "l-run")
		vms, err := e.rt.List(t.Context())
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		ids := make([]string, len(vms))
		for i, vm := range vms {
			ids[i] = vm.ID
			if got := e.get(t, vm.ID); got.Status != vm.Status {
				t.Errorf("List says VM %q is %s, Get says %s", vm.ID, vm.Status, got.Status)
			}
		}
		want := slices.Sorted(slices.Values(created))
		if !slices.Equal(ids, want) {
			t.Errorf("List = %q, want %q (sorted by id)", ids, want)
		}
	})

	t.Run("OmitsDestroyed", func(t *testing.T) {
		e.create(t, "l-gone")
		if _, err := e.rt.Destroy(t.Context(), "l-gone"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if ids := e.listIDs(t); slices.Contains(ids, "l-gone") {
			t.Errorf("List = %q after Destroy, want it without %q", ids, "l-gone")
		}
	})
}

// ---------------------------------------------------------------------------
// Destroy

func (s *suite) testDestroy(t *testing.T) {
	e := s.env(t)

	t.Run("ReturnsLastView", func(t *testing.T) {
		before := e.make(t, "d-view", s.live())
		vm, err := e.rt.Destroy(t.Context(), "d-view")
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if vm.ID != "d-view" || vm.Status != microvm.StatusDestroyed {
			t.Errorf("Destroy returned VM %q with status %s, want %q destroyed", vm.ID, vm.Status, "d-view")
		}
		wantSpec(t, "spec returned by Destroy", vm.Spec, before.Spec)
		e.wantGone(t, "d-view")
	})

	t.Run("Twice", func(t *testing.T) {
		e.create(t, "d-twice")
		if _, err := e.rt.Destroy(t.Context(), "d-twice"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		_, err := e.rt.Destroy(t.Context(), "d-twice")
		wantErr(t, "second Destroy", err, microvm.ErrNotFound)
	})

	t.Run("IDReusable", func(t *testing.T) {
		st := microvm.StatusPaused
		if s.h.NoBoot {
			st = microvm.StatusCreated
		}
		e.make(t, "d-reuse", st)
		if _, err := e.rt.Destroy(t.Context(), "d-reuse"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		spec := e.spec.Clone()
		spec.Labels = map[string]string{"generation": "2"}
		vm, err := e.rt.Create(t.Context(), "d-reuse", spec)
		if err != nil {
			t.Fatalf("Create after Destroy of the same id: %v", err)
		}
		if vm.Status != microvm.StatusCreated || vm.LastError != "" || vm.RestoredFrom != "" {
			t.Errorf("re-created VM: status %s, LastError %q, RestoredFrom %q; want a fresh created VM", vm.Status, vm.LastError, vm.RestoredFrom)
		}
		wantSpec(t, "spec of the re-created VM", e.get(t, "d-reuse").Spec, spec.WithDefaults())
		if s.h.NoBoot {
			e.checkStartFails(t, "d-reuse")
		} else if _, err := e.rt.Start(t.Context(), "d-reuse"); err != nil {
			t.Errorf("Start of the re-created VM: %v", err)
		}
	})
}

// ---------------------------------------------------------------------------
// Logs

func (s *suite) testLogs(t *testing.T) {
	e := s.env(t)

	t.Run("UnknownVM", func(t *testing.T) {
		_, err := e.rt.Logs(t.Context(), "logs-none", 0)
		wantErr(t, "Logs of an unknown VM", err, microvm.ErrNotFound)
	})

	t.Run("Lines", func(t *testing.T) {
		e.make(t, "logs-vm", s.live())
		all, err := e.rt.Logs(t.Context(), "logs-vm", 0)
		if err != nil {
			t.Fatalf("Logs(0): %v", err)
		}
		if _, err := e.rt.Logs(t.Context(), "logs-vm", -1); err != nil {
			t.Errorf("Logs(-1): %v", err)
		}
		one, err := e.rt.Logs(t.Context(), "logs-vm", 1)
		if err != nil {
			t.Fatalf("Logs(1): %v", err)
		}
		if len(one) > 1 {
			t.Errorf("Logs(1) returned %d lines, want at most 1", len(one))
		}
		if len(all) > 0 && len(one) == 0 {
			t.Errorf("Logs(1) returned nothing, but Logs(0) returned %d lines", len(all))
		}
	})

	t.Run("AfterDestroy", func(t *testing.T) {
		e.create(t, "logs-gone")
		if _, err := e.rt.Destroy(t.Context(), "logs-gone"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		_, err := e.rt.Logs(t.Context(), "logs-gone", 0)
		wantErr(t, "Logs of a destroyed VM", err, microvm.ErrNotFound)
	})
}

// ---------------------------------------------------------------------------
// Close

func (s *suite) testClose(t *testing.T) {
	e := s.env(t)
	e.make(t, "close-vm", s.live())
	if !s.h.NoBoot {
		e.snapshot(t, "close-vm", "close-snap")
	}
	if _, err := e.rt.Destroy(t.Context(), "close-vm"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if !s.h.NoBoot {
		if err := e.rt.DeleteSnapshot(t.Context(), "close-snap", nil); err != nil {
			t.Fatalf("DeleteSnapshot: %v", err)
		}
	}
	if err := e.rt.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := t.Context()
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Create", func() error { _, err := e.rt.Create(ctx, "close-new", e.spec.Clone()); return err }},
		{"Start", func() error { _, err := e.rt.Start(ctx, "close-vm"); return err }},
		{"Stop", func() error { _, err := e.rt.Stop(ctx, "close-vm", nil); return err }},
		{"Pause", func() error { _, err := e.rt.Pause(ctx, "close-vm"); return err }},
		{"Resume", func() error { _, err := e.rt.Resume(ctx, "close-vm"); return err }},
		{"Snapshot", func() error { _, err := e.rt.Snapshot(ctx, "close-vm", "close-snap-2", nil); return err }},
		{"Restore", func() error { _, err := e.rt.Restore(ctx, "close-new", "close-snap", nil); return err }},
		{"Destroy", func() error { _, err := e.rt.Destroy(ctx, "close-vm"); return err }},
		{"Get", func() error { _, err := e.rt.Get(ctx, "close-vm"); return err }},
		{"List", func() error { _, err := e.rt.List(ctx); return err }},
		{"Snapshots", func() error { _, err := e.rt.Snapshots(ctx, ""); return err }},
		{"DeleteSnapshot", func() error { return e.rt.DeleteSnapshot(ctx, "close-snap", nil) }},
		{"Logs", func() error { _, err := e.rt.Logs(ctx, "close-vm", 0); return err }},
	} {
		wantErr(t, c.name+" after Close", c.call(), microvm.ErrClosed)
	}
	if err := e.rt.Close(); err != nil && !errors.Is(err, microvm.ErrClosed) {
		t.Errorf("second Close: %v, want nil or ErrClosed", err)
	}
}
