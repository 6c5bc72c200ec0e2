package memory_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

func TestFakeGuestAgent(t *testing.T) {
	ctx := context.Background()
	rt := memory.New(nil)
	defer rt.Close()
	var ga microvm.GuestAgent = rt
	spec := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 128}
	if _, err := rt.Create(ctx, "a", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := ga.Ping(ctx, "a"); !errors.Is(err, microvm.ErrInvalidTransition) || !strings.HasPrefix(err.Error(), `vm "a" is created, not running: its guest agent cannot answer`) {
		t.Fatalf("Ping of a created VM = %v", err)
	}
	if _, err := ga.Ping(ctx, "zz"); !errors.Is(err, microvm.ErrNotFound) {
		t.Fatalf("Ping of an unknown VM = %v", err)
	}
	if _, err := rt.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := ga.WriteFile(ctx, "a", "/etc/x", strings.NewReader("data"), &microvm.WriteFileOptions{Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	fi, err := ga.ReadFile(ctx, "a", "/etc/x", &b)
	if err != nil || b.String() != "data" || fi.Mode != 0o600 || fi.Size != 4 {
		t.Fatalf("ReadFile = %+v %v %q", fi, err, b.String())
	}
	if err := ga.SetEnv(ctx, "a", map[string]string{"K": "v"}); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if res, err := ga.Exec(ctx, "a", microvm.ExecRequest{Args: []string{"env"}, Stdout: &b}); err != nil || res.ExitCode != 0 || !strings.Contains(b.String(), "K=v\n") {
		t.Fatalf("env: %v %q", err, b.String())
	}
	if res, _ := ga.Exec(ctx, "a", microvm.ExecRequest{Args: []string{"exit", "3"}}); res.ExitCode != 3 {
		t.Fatalf("exit 3: %+v", res)
	}
	if _, err := ga.Exec(ctx, "a", microvm.ExecRequest{Args: []string{"nope"}}); !errors.Is(err, microvm.ErrCommandNotFound) {
		t.Fatalf("unknown command: %v", err)
	}
	if err := ga.SetEnv(ctx, "a", map[string]string{"1K": "v"}); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Fatalf("bad key: %v", err)
	}
	if err := ga.SetSecret(ctx, "a", "bad/name", nil); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Fatalf("bad secret name: %v", err)
	}
	if err := ga.WriteFile(ctx, "a", "/proc/x", strings.NewReader(""), nil); !errors.Is(err, microvm.ErrPathNotAllowed) {
		t.Fatalf("write to /proc: %v", err)
	}
}
