package snapshot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

// The crash tests re-execute the test binary as a child that creates a
// snapshot; the parent kills it (or it kills itself at a named step) and
// checks what a new Store sees.
const (
	envChild   = "MVM_SNAPSHOT_TEST_CHILD" // "commit" or "hold"
	envDir     = "MVM_SNAPSHOT_TEST_DIR"
	envID      = "MVM_SNAPSHOT_TEST_ID"
	envParent  = "MVM_SNAPSHOT_TEST_PARENT" // diff on this parent when set
	envCrashAt = "MVM_SNAPSHOT_TEST_CRASH_AT"
	envSize    = "MVM_SNAPSHOT_TEST_SIZE"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envChild); mode != "" {
		if err := childMain(mode); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childMemory is the memory a child writes for snapshot id: dense for a
// full snapshot, a few extents for a diff.
func childMemory(id string, size int64, diff bool) []extent {
	seed := uint64(len(id)) * 1000003
	for _, c := range id {
		seed = seed*31 + uint64(c)
	}
	if !diff {
		return []extent{{0, pseudo(seed, int(size))}}
	}
	var exts []extent
	for i := int64(0); i < 8; i++ {
		off := (i*size/8 + int64(seed%16)*page) &^ (page - 1)
		exts = append(exts, extent{off, pseudo(seed+uint64(i), 4*page)})
	}
	return exts
}

func childMain(mode string) error {
	dir, id, parent := os.Getenv(envDir), os.Getenv(envID), os.Getenv(envParent)
	size, _ := strconv.ParseInt(os.Getenv(envSize), 10, 64)
	crashAt := os.Getenv(envCrashAt)
	testHook = func(step string) {
		if step == crashAt {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	s, err := Open(dir)
	if err != nil {
		return err
	}
	p, err := s.Begin(id)
	if err != nil {
		return err
	}
	hook("begun")
	if err := os.WriteFile(p.StatePath(), pseudo(uint64(len(id)), 5*page+3), 0o600); err != nil {
		return err
	}
	f, err := os.Create(p.MemPath())
	if err != nil {
		return err
	}
	f.Truncate(size)
	for _, e := range childMemory(id, size, parent != "") {
		if _, err := f.WriteAt(e.data, e.off); err != nil {
			return err
		}
	}
	f.Close()
	hook("written")
	fmt.Println("ready")
	if mode == "hold" {
		bufio.NewReader(os.Stdin).ReadString('\n') // until the parent says
		return p.Abort()
	}
	m := Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(int(size >> 20))}
	if parent != "" {
		m.Type, m.Parent = microvm.SnapshotDiff, parent
	}
	if _, err := p.Commit(m); err != nil {
		return err
	}
	fmt.Println("done")
	return nil
}

type child struct {
	cmd    *exec.Cmd
	out    *bufio.Reader
	stdin  *os.File
	stderr strings.Builder
}

func startChild(t *testing.T, mode, dir, id, parent, crashAt string, size int64) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+mode, envDir+"="+dir, envID+"="+id,
		envParent+"="+parent, envCrashAt+"="+crashAt, envSize+"="+strconv.FormatInt(size, 10))
	c := &child{cmd: cmd}
	cmd.Stderr = &c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = r
	c.stdin = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	c.out = bufio.NewReader(out)
	t.Cleanup(func() { cmd.Process.Kill(); w.Close(); cmd.Wait() })
	return c
}

// line reads the child's next line of output ("" at EOF).
func (c *child) line() string {
	l, _ := c.out.ReadString('\n')
	return strings.TrimSpace(l)
}

// settle checks the store after a child died: the snapshot is either
// absent or complete and verified, and a fresh Open removes every pending
// directory. It reports whether the snapshot exists.
func settle(t *testing.T, dir, id string) bool {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range entries(t, dir) {
		if strings.HasPrefix(name, ".") && name != lockFileName {
			t.Fatalf("after Open, the store still holds %s", name)
		}
	}
	_, err = s.Get(id)
	switch {
	case errors.Is(err, microvm.ErrSnapshotNotFound):
		return false
	case err != nil:
		t.Fatalf("Get after a crash = %v: want a complete snapshot or ErrSnapshotNotFound", err)
	}
	if err := s.Verify(context.Background(), id); err != nil {
		t.Fatalf("snapshot visible after a crash does not verify: %v", err)
	}
	return true
}

func TestCrashDuringCommit(t *testing.T) {
	const size = 8 << 20
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	base := createFull(t, s, "base", "vm", pseudo(42, size))

	for _, kind := range []string{"full", "diff"} {
		parent := ""
		if kind == "diff" {
			parent = base.ID
		}
		t.Run(kind+"/steps", func(t *testing.T) {
			steps := []string{"begun", "written", "hashed", "manifest", "rename", "published"}
			if kind == "diff" {
				steps = append(steps, "merged")
			}
			for _, step := range steps {
				id := kind + "-" + step
				c := startChild(t, "commit", dir, id, parent, step, size)
				c.cmd.Wait()
				exists := settle(t, dir, id)
				if want := step == "published"; exists != want {
					t.Errorf("killed at %q: snapshot exists = %v, want %v (stderr: %s)", step, exists, want, c.stderr.String())
				}
				s.Delete(id, true)
			}
		})
		t.Run(kind+"/random", func(t *testing.T) {
			// Calibrate: how long does a Commit take here? (median of 3)
			var spans []time.Duration
			for i := range 3 {
				id := fmt.Sprintf("%s-calib%d", kind, i)
				c := startChild(t, "commit", dir, id, parent, "", size)
				if l := c.line(); l != "ready" {
					t.Fatalf("child said %q: %s", l, c.stderr.String())
				}
				t0 := time.Now()
				if l := c.line(); l != "done" {
					t.Fatalf("child said %q: %s", l, c.stderr.String())
				}
				spans = append(spans, time.Since(t0))
				c.cmd.Wait()
				s.Delete(id, true)
			}
			slices.Sort(spans)
			span := spans[1] * 3 / 2

			iterations := 40
			if testing.Short() {
				iterations = 10
			}
			var committed, absent int
			for i := range iterations {
				id := fmt.Sprintf("%s-r%d", kind, i)
				c := startChild(t, "commit", dir, id, parent, "", size)
				if l := c.line(); l != "ready" {
					t.Fatalf("child said %q: %s", l, c.stderr.String())
				}
				time.Sleep(rand.N(span))
				c.cmd.Process.Signal(syscall.SIGKILL)
				c.cmd.Wait()
				if settle(t, dir, id) {
					committed++
				} else {
					absent++
				}
				s.Delete(id, true)
			}
			t.Logf("%s: %d kills within %v of Commit starting: %d left a complete snapshot, %d none", kind, iterations, span, committed, absent)
		})
	}
	// The parent of every diff was never harmed.
	if err := s.Verify(context.Background(), "base"); err != nil {
		t.Fatal(err)
	}
	onlyVisible(t, dir, "base")
}

// TestPendingOfDeadProcess: a live process's pending snapshot survives
// another process's Open and blocks Begin of its id; once the process is
// killed, Open removes it and the id is free.
func TestPendingOfDeadProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	c := startChild(t, "hold", dir, "held", "", "", 1<<20)
	if l := c.line(); l != "ready" {
		t.Fatalf("child said %q: %s", l, c.stderr.String())
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, pendingPrefix+"held")); err != nil {
		t.Fatalf("Open removed the pending snapshot of a live process: %v", err)
	}
	_, err = s.Begin("held")
	wantErr(t, err, microvm.ErrSnapshotExists)

	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
	if _, err := os.Stat(filepath.Join(dir, pendingPrefix+"held")); err != nil {
		t.Fatalf("pending directory of the killed child: %v", err)
	}
	// Begin reclaims it right away ...
	p, err := s.Begin("held")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.StatePath()); !os.IsNotExist(err) {
		t.Errorf("the new pending snapshot holds the dead one's files: %v", err)
	}
	p.Abort()
	// ... and Open does too.
	c = startChild(t, "hold", dir, "held2", "", "", 1<<20)
	c.line()
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	onlyVisible(t, dir)
}
