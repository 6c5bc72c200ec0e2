package main

import (
	"bytes"
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mvm-dev/microvm/agent"
)

// runIn runs mvm with stdin.
func (c *cli) runIn(stdin string, args ...string) (int, string, string) {
	c.t.Helper()
	return c.runWith(nil, stdin, append([]string{"--firecracker-bin", c.fc}, args...)...)
}

// TestCLIGuestAgent drives mvm exec, cp, env and secret across processes
// against the stand-in firecracker whose vsock is bridged to the real agent
// service running in this test process.
func TestCLIGuestAgent(t *testing.T) {
	c := newCLI(t)
	guestDir, root := t.TempDir(), t.TempDir()
	shm, err := os.MkdirTemp("/dev/shm", "mvm-cli-agent-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	defer os.RemoveAll(shm)
	ln, err := net.Listen("unix", filepath.Join(guestDir, strconv.Itoa(agent.HTTPPort)+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	svc := &agent.Service{Version: "cli", SecretsDir: filepath.Join(shm, "s"), FileRoots: []string{root}, Env: []string{"PATH=" + os.Getenv("PATH")}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	c.setStandin("FCSTANDIN_VSOCK_GUEST=" + guestDir) // firecracker runs in Config.Env, not mvm's environment

	dir := t.TempDir()
	kernel, rootfs := images(t)
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32", "--vsock-cid", "3", "--start")

	code, out, errs := c.run("exec", "cli-a", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
	if code != 5 || out != "out\n" || errs != "err\n" {
		t.Fatalf("exec: exit %d stdout %q stderr %q; want 5, out, err", code, out, errs)
	}
	if code, out, _ := c.runIn("from stdin\n", "exec", "cli-a", "--", "cat"); code != 0 || out != "from stdin\n" {
		t.Fatalf("exec cat: exit %d %q", code, out)
	}
	if code, out, _ := c.run("exec", "cli-a", "-e", "X=1", "--", "sh", "-c", `[ "$X" = 1 ] && kill -TERM $$`); code != 128+15 {
		t.Fatalf("exec killed by SIGTERM: exit %d %q, want 143", code, out)
	}
	if code, _, errs := c.run("exec", "cli-a", "--", "no-such-command-mvm"); code != 1 || !strings.Contains(errs, "command not found") {
		t.Fatalf("exec of a missing command: exit %d %q", code, errs)
	}

	// cp both ways.
	src := filepath.Join(dir, "src.bin")
	data := bytes.Repeat([]byte{0, 1, 2, 255}, 1<<18)
	os.WriteFile(src, data, 0o640)
	c.ok("cp", src, "cli-a:"+filepath.Join(root, "in.bin"))
	if b, err := os.ReadFile(filepath.Join(root, "in.bin")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("cp in: %v", err)
	}
	back := filepath.Join(dir, "back.bin")
	c.ok("cp", "cli-a:"+filepath.Join(root, "in.bin"), back)
	if b, err := os.ReadFile(back); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("cp out: %v", err)
	}
	if code, _, errs := c.run("cp", src, "cli-a:/etc/mvm-not-allowed"); code != 1 || !strings.Contains(errs, "not_allowed") {
		t.Fatalf("cp outside the root: exit %d %q", code, errs)
	}

	// env and secret.
	c.ok("env", "cli-a", "GREETING=hi there")
	secret := "cli-secret-" + strconv.Itoa(os.Getpid())
	if code, _, errs := c.runIn(secret, "secret", "cli-a", "tok"); code != 0 {
		t.Fatalf("secret: exit %d %s", code, errs)
	}
	if out := c.ok("exec", "cli-a", "--", "sh", "-c", `echo "$GREETING"; cat "$MVM_SECRETS_DIR/tok"`); out != "hi there\n"+secret {
		t.Fatalf("exec saw %q", out)
	}
	filepath.WalkDir(c.stateDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(secret)) {
				t.Errorf("the secret is in %s", p)
			}
		}
		return nil
	})

	// Usage errors exit 2; operation errors 1.
	for _, args := range [][]string{
		{"secret", "cli-a", "bad/name"},
		{"env", "cli-a", "1BAD=x"},
		{"env", "cli-a", "NOEQUALS"},
		{"exec", "cli-a"},
		{"exec", "cli-a", "true"},
		{"cp", "a", "b"},
	} {
		if code, _, errs := c.runIn("v", args...); code != 2 {
			t.Errorf("mvm %v: exit %d (%s), want 2", args, code, errs)
		}
	}
	if code, _, errs := c.run("exec", "nope", "--", "true"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("exec in an unknown VM: exit %d %q", code, errs)
	}
	c.ok("stop", "cli-a")
	if code, _, errs := c.run("exec", "cli-a", "--", "true"); code != 1 || !strings.Contains(errs, "not running") {
		t.Errorf("exec in a stopped VM: exit %d %q", code, errs)
	}
}
