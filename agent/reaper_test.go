//go:build linux

package agent_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
)

const reaperChildEnv = "MVM_AGENT_TEST_REAPER_CHILD"

// TestReaperMode runs TestReaperChild in a process of its own, where a
// Reaper collects every child as the agent does as PID 1 (it would steal
// the statuses other tests' commands wait for).
func TestReaperMode(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestReaperChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), reaperChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestReaperChild") {
		t.Fatalf("reaper child: %v\n%s", err, out)
	}
}

func TestReaperChild(t *testing.T) {
	if os.Getenv(reaperChildEnv) == "" {
		t.Skip("run by TestReaperMode")
	}
	// As PID 1 in a guest, orphans come to this process: a subreaper
	// gets them the same way here.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	r := agent.StartReaper()
	ta := startAgentWith(t, func(s *agent.Service) { s.Reaper = r })
	// Orphans and commands at once: every status reaches its exec.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			res, err := ta.g.Exec(ctx2(t), microvm.ExecRequest{Args: []string{"sh", "-c", `(sleep 0.05 &); echo "$0"; exit $(($0 % 5))`, fmt.Sprint(i)}, Stdout: &out})
			if err != nil || res.ExitCode != i%5 || out.String() != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("exec %d: %+v %v %q", i, res, err, out.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	res, err := ta.g.Exec(ctx2(t), microvm.ExecRequest{Args: []string{"sh", "-c", "kill -KILL $$"}})
	if err != nil || res.Signal != "SIGKILL" {
		t.Fatalf("killed: %+v %v", res, err)
	}
	// The orphans were reaped, not left as zombies of this process.
	for range 200 {
		if r.ReapAll() {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 10e6}, nil)
	}
	t.Fatal("children left unreaped")
}
