package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// mvm runs the CLI in-process and returns its exit status and output.
func mvm(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"start"},                       // missing NAME
		{"start", "a", "b"},             // too many
		{"ls", "extra"},                 // no args allowed
		{"--no-such-flag", "ls"},        // unknown flag
		{"-o", "yaml", "ls"},            // bad output format
		{"--runtime", "qemu", "ls"},     // bad runtime
		{"create", "x"},                 // required flags missing
		{"create", "x", "--vcpus", "z"}, // bad flag value
	} {
		code, _, stderr := mvm(t, args...)
		if code != 2 {
			t.Errorf("mvm %q: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
		if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 || !strings.HasPrefix(stderr, "mvm: ") {
			t.Errorf("mvm %q: stderr must be one line starting with 'mvm: ', got %q", args, stderr)
		}
	}
}

func TestOperationErrorsExit1(t *testing.T) {
	// The memory runtime is empty in every process: any VM is unknown.
	code, _, stderr := mvm(t, "--runtime", "memory", "start", "nope")
	if code != 1 || !strings.Contains(stderr, "not found") {
		t.Fatalf("exit %d stderr %q, want 1 and 'not found'", code, stderr)
	}
	code, _, stderr = mvm(t, "--runtime", "memory", "create", "bad_id", "--kernel", "k", "--rootfs", "r")
	if code != 1 || !strings.Contains(stderr, "invalid id") {
		t.Fatalf("exit %d stderr %q, want 1 and 'invalid id'", code, stderr)
	}
	code, _, stderr = mvm(t, "--runtime", "memory", "create", "a", "--kernel", "k", "--rootfs", "r", "--vcpus", "0")
	if code != 1 || !strings.Contains(stderr, "vcpus") {
		t.Fatalf("exit %d stderr %q, want 1 naming vcpus", code, stderr)
	}
}

func TestCreateJSON(t *testing.T) {
	code, stdout, stderr := mvm(t, "--runtime", "memory", "-o", "json", "create", "vm-1",
		"--kernel", "/k", "--rootfs", "/r", "--drive", "/d:ro", "--label", "a=b", "--start")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var vm struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Spec   struct {
			Drives []struct {
				Path     string `json:"path"`
				ReadOnly bool   `json:"read_only"`
			} `json:"drives"`
			Labels map[string]string `json:"labels"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(stdout), &vm); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout)
	}
	if vm.ID != "vm-1" || vm.Status != "running" || len(vm.Spec.Drives) != 1 || !vm.Spec.Drives[0].ReadOnly || vm.Spec.Labels["a"] != "b" {
		t.Fatalf("unexpected VM: %+v", vm)
	}
}

func TestDemoMemory(t *testing.T) {
	code, stdout, stderr := mvm(t, "--runtime", "memory", "demo")
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr, stdout)
	}
	for _, want := range []string{"runtime: memory", "create demo-", "snapshot demo-", "restore demo-snap-", "destroy demo-clone-", "demo finished"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestDemoFallsBackAndSaysWhy(t *testing.T) {
	t.Setenv("MVM_RUNTIME", "")
	t.Setenv("MVM_FIRECRACKER_BIN", "")
	reason := firecrackerUnavailable(context.Background(), "", os.Getenv("MVM_KERNEL"), os.Getenv("MVM_ROOTFS"))
	if reason == "" {
		t.Skip("this host can run Firecracker: the fallback is not taken")
	}
	code, stdout, stderr := mvm(t, "demo")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "runtime: memory, because "+reason) {
		t.Fatalf("demo must say it used the memory runtime and why:\n%s", stdout)
	}
}

func TestDoctor(t *testing.T) {
	code, stdout, _ := mvm(t, "-o", "json", "doctor")
	var checks []check
	if err := json.Unmarshal([]byte(stdout), &checks); err != nil {
		t.Fatalf("doctor -o json: %v\n%s", err, stdout)
	}
	names := map[string]check{}
	failed := false
	for _, c := range checks {
		names[c.Name] = c
		if c.Status != "ok" && c.Status != "warn" && c.Status != "fail" {
			t.Errorf("check %s: bad status %q", c.Name, c.Status)
		}
		if c.Status != "ok" && c.Hint == "" && c.Name != "ip_forward" {
			t.Errorf("check %s is %s but has no fix hint", c.Name, c.Status)
		}
		failed = failed || c.Status == "fail"
	}
	for _, n := range []string{"kvm", "firecracker", "jailer", "tun", "userfaultfd", "cgroup2", "nftables", "ip_forward"} {
		if _, ok := names[n]; !ok {
			t.Errorf("doctor lacks check %q", n)
		}
	}
	if want := map[bool]int{false: 0, true: 1}[failed]; code != want {
		t.Errorf("exit %d, want %d (failed=%v)", code, want, failed)
	}
}
