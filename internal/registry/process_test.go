package registry_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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

	"github.com/mvm-dev/microvm/internal/registry"
)

// Environment of the helper process.
const (
	envHelper = "MVM_REGISTRY_TEST_HELPER" // mode
	envDir    = "MVM_REGISTRY_TEST_DIR"
	envGen    = "MVM_REGISTRY_TEST_GEN"
)

// TestHelperProcess is not a real test: it is the child process started by
// the cross-process tests (see startHelper).
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("helper process; run only by other tests")
	}
	if err := helperMain(mode, os.Getenv(envDir)); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helperMain(mode, dir string) error {
	r, err := registry.Open(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	switch mode {
	case "write":
		for i := range 10 {
			if err := r.Put("vm", fmt.Sprintf("p%d", i), childRecord{N: i, PID: os.Getpid()}); err != nil {
				return err
			}
		}
		return r.Create("lease", "child", childRecord{PID: os.Getpid()})
	case "lock":
		unlock, err := r.Lock(context.Background(), "shared")
		if err != nil {
			return err
		}
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin) // hold until the parent closes stdin
		unlock()
		return nil
	case "crash":
		gen, err := strconv.Atoi(os.Getenv(envGen))
		if err != nil {
			return err
		}
		// An earlier child may have been killed between Create and Delete.
		if err := r.Delete("scratch", "s"); err != nil {
			return err
		}
		fmt.Println("ready")
		for ; ; gen++ {
			for i := range crashRecords {
				if err := r.Put("vm", crashID(i), makeGen(crashID(i), gen)); err != nil {
					return err
				}
			}
			// Exercise Create's link path and Delete too.
			if err := r.Create("scratch", "s", makeGen("s", gen)); err != nil {
				return err
			}
			if err := r.Delete("scratch", "s"); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("unknown mode %q", mode)
}

type childRecord struct {
	N   int `json:"n"`
	PID int `json:"pid"`
}

// helper is a running child process.
type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
}

func startHelper(t *testing.T, mode, dir string, env ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"="+mode, envDir+"="+dir)
	cmd.Env = append(cmd.Env, env...)
	h := &helper{cmd: cmd, lines: make(chan string, 16), stderr: new(bytes.Buffer)}
	cmd.Stderr = h.stderr
	var err error
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		defer close(h.lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			h.lines <- s.Text()
		}
	}()
	return h
}

// expect waits for the child to print line.
func (h *helper) expect(t *testing.T, line string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case got, ok := <-h.lines:
			if !ok {
				h.cmd.Wait()
				t.Fatalf("helper exited before printing %q: %v\nstderr:\n%s", line, h.cmd.ProcessState, h.stderr)
			}
			if got == line {
				return
			}
		case <-timeout:
			t.Fatalf("helper did not print %q within 30s\nstderr:\n%s", line, h.stderr)
		}
	}
}

func (h *helper) wait(t *testing.T) {
	t.Helper()
	for range h.lines { // drain so Wait can finish
	}
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\nstderr:\n%s", err, h.stderr)
	}
}

func TestCrossProcessRecords(t *testing.T) {
	r := openTemp(t)
	h := startHelper(t, "write", r.Dir())
	h.wait(t)

	ids, err := r.List("vm")
	want := []string{"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"}
	if err != nil || !slices.Equal(ids, want) {
		t.Fatalf("List = %v, %v; want %v", ids, err, want)
	}
	childPID := h.cmd.ProcessState.Pid()
	for i, id := range ids {
		var rec childRecord
		if err := r.Get("vm", id, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.N != i || rec.PID != childPID {
			t.Fatalf("%s = %+v, want n=%d pid=%d", id, rec, i, childPID)
		}
	}
	if err := r.Create("lease", "child", childRecord{}); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("Create over child's record = %v, want ErrExists", err)
	}
}

func TestCrossProcessLock(t *testing.T) {
	for _, how := range []string{"release", "kill"} {
		t.Run(how, func(t *testing.T) {
			r := openTemp(t)
			h := startHelper(t, "lock", r.Dir())
			h.expect(t, "locked")

			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			if _, err := r.Lock(ctx, "shared"); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Lock while child holds it = %v, want DeadlineExceeded", err)
			}

			if how == "release" {
				h.stdin.Close()
				h.wait(t)
			} else {
				h.cmd.Process.Kill()
				h.cmd.Wait()
			}
			ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			unlock, err := r.Lock(ctx, "shared")
			if err != nil {
				t.Fatalf("Lock after child %s = %v", how, err)
			}
			unlock()
		})
	}
}

// Crash test: a child rewrites crashRecords records in order, generation
// after generation, and is SIGKILLed at random moments.
const (
	crashRecords  = 4
	crashBlobSize = 64 << 10 // 16 pages: a torn write would show
)

func crashID(i int) string { return fmt.Sprintf("r%d", i) }

type genPayload struct {
	ID   string `json:"id"`
	Gen  int    `json:"gen"`
	Blob string `json:"blob"`
	Sum  string `json:"sum"` // sha256 of id, gen and blob
}

func genSum(id string, gen int, blob string) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d/%s", id, gen, blob)))
	return hex.EncodeToString(h[:])
}

func makeGen(id string, gen int) genPayload {
	seed := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", id, gen)))
	unit := hex.EncodeToString(seed[:])
	blob := strings.Repeat(unit, crashBlobSize/len(unit))
	return genPayload{ID: id, Gen: gen, Blob: blob, Sum: genSum(id, gen, blob)}
}

// checkGen reports whether p is a complete, self-consistent generation.
func checkGen(p genPayload, id string) error {
	if p.ID != id || p.Sum != genSum(p.ID, p.Gen, p.Blob) || p.Blob != makeGen(id, p.Gen).Blob {
		return fmt.Errorf("record %s: inconsistent payload (id %q gen %d, %d blob bytes)", id, p.ID, p.Gen, len(p.Blob))
	}
	return nil
}

func TestCrashSafety(t *testing.T) {
	iterations := 50
	if testing.Short() {
		iterations = 10
	}
	budget := time.Now().Add(90 * time.Second)

	dir := filepath.Join(t.TempDir(), "state")
	r, err := registry.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	gens := make([]int, crashRecords)
	for i := range crashRecords {
		if err := r.Put("vm", crashID(i), makeGen(crashID(i), 0)); err != nil {
			t.Fatal(err)
		}
	}

	var done, midWrite, progressed int
	seenTemps := map[string]bool{}
	// Keep going past the planned iterations (up to 4x) until at least
	// minMidWrite kills have landed inside a write.
	const minMidWrite = 5
	for iter := 0; (iter < iterations || midWrite < minMidWrite && iter < 4*iterations) && time.Now().Before(budget); iter++ {
		// Restart at the oldest generation so that records stay at most
		// one generation apart.
		h := startHelper(t, "crash", dir, fmt.Sprintf("%s=%d", envGen, gens[crashRecords-1]+1))
		h.expect(t, "ready")
		time.Sleep(time.Duration(rand.N(120_000)) * time.Microsecond)
		if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		h.cmd.Wait()
		if ws, ok := h.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("iteration %d: child was not killed: %v\nstderr:\n%s", iter, h.cmd.ProcessState, h.stderr)
		}

		// A fresh Open, as a restarted controller would do.
		r2, err := registry.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := r2.List("vm")
		if err != nil || len(ids) != crashRecords {
			t.Fatalf("iteration %d: List = %v, %v", iter, ids, err)
		}
		now := make([]int, crashRecords)
		for i := range crashRecords {
			var p genPayload
			if err := r2.Get("vm", crashID(i), &p); err != nil {
				t.Fatalf("iteration %d: Get %s: %v", iter, crashID(i), err)
			}
			if err := checkGen(p, crashID(i)); err != nil {
				t.Fatalf("iteration %d: %v", iter, err)
			}
			if p.Gen < gens[i] {
				t.Fatalf("iteration %d: %s went back from generation %d to %d", iter, crashID(i), gens[i], p.Gen)
			}
			now[i] = p.Gen
		}
		// Writes are sequential r0, r1, ...: each record holds the new
		// generation or the one before, never anything else.
		for i := 1; i < crashRecords; i++ {
			if now[i] > now[i-1] || now[i] < now[0]-1 {
				t.Fatalf("iteration %d: generations %v are not an old/new prefix", iter, now)
			}
		}
		if now[0] > gens[0] {
			progressed++
		}
		copy(gens, now)

		var s genPayload
		switch err := r2.Get("scratch", "s", &s); {
		case errors.Is(err, registry.ErrNotFound):
		case err != nil:
			t.Fatalf("iteration %d: Get scratch: %v", iter, err)
		default:
			if err := checkGen(s, "s"); err != nil {
				t.Fatalf("iteration %d: %v", iter, err)
			}
		}
		if ids, err := r2.List("scratch"); err != nil || len(ids) > 1 {
			t.Fatalf("iteration %d: List scratch = %v, %v", iter, ids, err)
		}
		fresh := 0
		for _, kind := range []string{"vm", "scratch"} {
			for _, name := range temps(t, filepath.Join(dir, kind)) {
				if !seenTemps[name] {
					seenTemps[name] = true
					fresh++
				}
			}
		}
		if fresh > 0 {
			midWrite++
		}
		r2.Close()
		done++
	}
	if done < 5 {
		t.Fatalf("only %d iterations within the time budget", done)
	}
	t.Logf("%d kills: %d left a new temp file (killed mid-write), %d advanced record r0; final generations %v", done, midWrite, progressed, gens)

	// Leftover temp files do not get in the way of new writes.
	for i := range crashRecords {
		if err := r.Put("vm", crashID(i), makeGen(crashID(i), gens[0]+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Create("scratch", "s2", 1); err != nil {
		t.Fatal(err)
	}
}

// temps returns the temporary files in dir.
func temps(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			names = append(names, filepath.Join(dir, e.Name()))
		}
	}
	return names
}
