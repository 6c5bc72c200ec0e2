package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
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
		// Empty names, negative counts and durations, bad values the
		// library refuses (a spec or id rule): all the command line's fault.
		{"--runtime", "memory", "snapshots", ""},
		{"--runtime", "memory", "start", ""},
		{"--runtime", "memory", "snapshot", "v", ""},
		{"--runtime", "memory", "restore", "", "v"},
		{"--runtime", "memory", "rm-snapshot", ""},
		{"--runtime", "memory", "logs", "v", "-n", "-1"},
		{"--runtime", "memory", "stop", "v", "--timeout", "-1s"},
		{"--runtime", "memory", "stop", "v", "--timeout", "soon"},
		{"--runtime", "memory", "create", "x", "--kernel", "/k", "--rootfs", "/r", "--label", "=v"},
		{"--runtime", "memory", "create", "x", "--kernel", "/k", "--rootfs", "/r", "--label", "noequals"},
		{"--runtime", "memory", "create", "x", "--kernel", "/k", "--rootfs", "/r", "--memory", "-1"},
		{"--runtime", "memory", "create", "x", "--kernel", "/k", "--rootfs", "/r", "--vcpus", "0"},
		{"--runtime", "memory", "create", "x", "--kernel", "/k", "--rootfs", "/r", "--drive", "/r"},
		{"--runtime", "memory", "create", "bad_id", "--kernel", "/k", "--rootfs", "/r"},
		{"--runtime", "memory", "start", "-x"},
		{"--state-dir", "", "ls"},
		{"--runtime", "memory", "restore", "s", "v", "--mem-backend", "floppy"},
		{"--runtime", "memory", "snapshot", "v", "s", "--parent", "p"},
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
	code, _, stderr = mvm(t, "--runtime", "memory", "snapshot", "nope", "s")
	if code != 1 || !strings.Contains(stderr, "not found") {
		t.Fatalf("exit %d stderr %q, want 1 and 'not found'", code, stderr)
	}
}

// TestMessagesInUserTerms: a refused command line is explained with the
// flag or argument the user gave and the rule it breaks, never with Go
// field names or parser internals.
func TestMessagesInUserTerms(t *testing.T) {
	create := []string{"--runtime", "memory", "create", "x", "--kernel", "/k", "--rootfs", "/r"}
	for _, c := range []struct {
		args   []string
		want   []string
		refuse []string
	}{
		{append(create, "--vcpus", "abc"), []string{`--vcpus: "abc" is not a whole number`}, []string{"strconv", "ParseInt"}},
		{append(create, "--vsock-cid", "-1"), []string{`--vsock-cid: "-1" is not a whole number from 0 to 4294967295`}, []string{"strconv"}},
		{[]string{"stop", "v", "--timeout", "soon"}, []string{`--timeout: "soon" is not a duration such as 30s`}, []string{"time: invalid"}},
		{[]string{"--state-dir", "", "ls"}, []string{"--state-dir must name a directory"}, []string{"StateDir", "config:"}},
		{append(create, "--vcpus", "0"), []string{"mvm: --vcpus: must be between 1 and 32 (got 0)\n"}, []string{"invalid spec"}},
		{append(create, "--memory", "0"), []string{"--memory: must be at least 1 (got 0)"}, []string{"memory_mib"}},
		{append(create, "--label", "=v"), []string{`--label must be KEY=VALUE with a non-empty KEY (got "=v")`}, nil},
		{append(create, "--drive", "/d", "--drive", "/d"), []string{"--drive 2 (/d): is the same image as --drive 1 (/d)"}, []string{"drives["}},
		{append(create, "--drive", "/r"), []string{"--drive 1 (/r): is the same image as --rootfs (/r)"}, []string{"root_drive"}},
		{[]string{"--runtime", "memory", "snapshots", ""}, []string{"snapshots: NAME must not be empty"}, nil},
		{[]string{"--runtime", "memory", "logs", "v", "-n", "-1"}, []string{"--lines must be 0 or more (got -1)"}, nil},
		{[]string{"--runtime", "memory", "stop", "v", "--timeout", "-1s"}, []string{"--timeout must be 0 or more (got -1s)"}, nil},
		{[]string{"--runtime", "memory", "restore", "s", "v", "--mem-backend", "floppy"}, []string{`--mem-backend must be file or uffd (got "floppy")`}, []string{"restore options"}},
		{[]string{"--runtime", "memory", "snapshot", "v", "s", "--parent", "p"}, []string{"--parent needs --diff"}, []string{"snapshot options", `type "diff"`}},
		{append(create, "--drive", "/d:rw"), []string{`--drive must be PATH[:ro] (got "/d:rw"): a drive is writable without a suffix`}, nil},
		{[]string{"--runtime", "memory", "cp", "/etc/hostname", "v:tmp/x"}, []string{`cp: the guest path of "v:tmp/x" must be absolute: VM:/PATH`}, nil},
		{[]string{"--runtime", "memory", "cp", "/a", "/b"}, []string{`cp: exactly one of SRC and DST must be VM:/PATH`}, nil},
		{[]string{"--runtime", "memory", "ratelimit", "v"}, []string{"mvm: ratelimit needs at least one --drive"}, []string{"mvm: mvm"}},
		{[]string{"--state-dir", t.TempDir(), "image", "rm", "nosuch", "bad/x"}, []string{`mvm: image "nosuch": not found; invalid image name: "bad/x": must be`}, []string{"image store"}},
		{[]string{"--state-dir", t.TempDir(), "image", "build", "a b", "--from-dir", t.TempDir()}, []string{`mvm: NAME: invalid image name: "a b"`}, []string{"image store"}},
		{[]string{"--runtime", "memory", "rm", "v", "--", "-x"}, []string{`mvm: rm: invalid id "-x"`}, nil},
	} {
		_, _, stderr := mvm(t, c.args...)
		for _, w := range c.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("mvm %q: stderr %q, want %q", c.args, stderr, w)
			}
		}
		for _, r := range c.refuse {
			if strings.Contains(stderr, r) {
				t.Errorf("mvm %q: stderr %q mentions %q", c.args, stderr, r)
			}
		}
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

// TestTypoIsOneLine: cobra's suggestions for a mistyped command are one
// line, without its line breaks and tabs; so are several errors at once,
// separated.
func TestTypoIsOneLine(t *testing.T) {
	if got, want := oneLine("image \"a\": not found\nimage \"b\":\tin use\n"), `image "a": not found; image "b": in use`; got != want {
		t.Errorf("oneLine of two errors: %q, want %q", got, want)
	}
	code, _, stderr := mvm(t, "strat", "vm-1")
	want := "mvm: unknown command \"strat\" for \"mvm\"; did you mean start or stats?\n"
	if code != 2 || stderr != want {
		t.Errorf("mvm strat: exit %d, stderr %q, want 2 and %q", code, stderr, want)
	}
	code, _, stderr = mvm(t, "snapshotz")
	if code != 2 || strings.ContainsAny(stderr, "\t") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "did you mean snapshot") {
		t.Errorf("mvm snapshotz: exit %d, stderr %q", code, stderr)
	}
}

// TestHelpNamesValues: a flag's usage text with back-quotes names its
// value (pflag takes the quoted word as the value's name): the help of
// create and image build reads "--image NAME", "--from-oci PATH".
func TestHelpNamesValues(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "--help"}, "--image NAME "},
		{[]string{"image", "build", "--help"}, "--from-oci PATH "},
	} {
		_, stdout, _ := mvm(t, c.args...)
		if !strings.Contains(stdout, c.want) || strings.Contains(stdout, "of mvm image") || strings.Contains(stdout, "--from-oci docker save") {
			t.Errorf("mvm %q: want %q in:\n%s", c.args, c.want, stdout)
		}
	}
}

// TestDemoFirecrackerSaysKVMPVM: the demo on Firecracker says when
// /dev/kvm is kvm-pvm (the guest will not boot), and only then.
func TestDemoFirecrackerSaysKVMPVM(t *testing.T) {
	if checkDevice("kvm", "/dev/kvm", "").Status != "ok" {
		t.Skip("no usable /dev/kvm: the demo takes the memory runtime")
	}
	dir := t.TempDir()
	kernel, rootfs := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := mvm(t, "--state-dir", t.TempDir(), "--firecracker-bin", standinWrapper(t), "demo", "--kernel", kernel, "--rootfs", rootfs)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr, stdout)
	}
	_, err := os.Stat(pvmModule)
	if pvm := err == nil; pvm != strings.Contains(stdout, "kvm-pvm") || !strings.Contains(stdout, "runtime: firecracker") {
		t.Errorf("demo on a host where kvm-pvm is %v:\n%s", pvm, stdout)
	}
}
