package firecracker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// supports reports whether the file system of dir supports a fallocate
// mode.
func supports(t *testing.T, dir string, mode uint32) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	f.Write(make([]byte, 3*65536))
	err = unix.Fallocate(int(f.Fd()), mode, 0, 65536)
	return err == nil
}

// exerciseTrim appends numbered lines from a writer goroutine (with
// O_APPEND, or at its own offset like firecracker's logger) while trimming
// the file, then checks that the kept lines are whole, consecutive and end
// with the last one written, and that the file's data stays bounded.
func exerciseTrim(t *testing.T, dir string, mode trimMode, appendMode bool) {
	path := filepath.Join(dir, "out.log")
	flags := os.O_WRONLY | os.O_CREATE
	if appendMode {
		flags |= os.O_APPEND
	}
	w, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const limit = 64 << 10
	const lines = 40000
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := range lines {
			// Lines of varying length, written whole by one write(2).
			if _, err := fmt.Fprintf(w, "line %08d %s\n", i, strings.Repeat("x", i%97)); err != nil {
				t.Error(err)
				return
			}
		}
	})
	trims := 0
	maxData := int64(0)
loop:
	for {
		select {
		case <-done:
			break loop
		default:
		}
		if err := trimFile(path, limit, mode); err != nil {
			t.Fatalf("trim: %v", err)
		}
		trims++
		var st unix.Stat_t
		unix.Stat(path, &st)
		maxData = max(maxData, st.Blocks*512)
	}
	wg.Wait()
	if err := trimFile(path, limit, mode); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 2*limit {
		t.Errorf("file uses %d bytes after the final trim, want about %d", used, limit/2)
	}
	got, err := tailLines(path, 0, limit)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 100 {
		t.Fatalf("only %d lines kept", len(got))
	}
	first := -1
	for i, l := range got {
		var n int
		var rest string
		if _, err := fmt.Sscanf(l, "line %08d %s", &n, &rest); err != nil && !strings.HasPrefix(l, fmt.Sprintf("line %08d", n)) {
			t.Fatalf("line %d is not whole: %q", i, l)
		}
		want := fmt.Sprintf("line %08d %s", n, strings.Repeat("x", n%97))
		if strings.TrimSpace(l) != strings.TrimSpace(want) {
			t.Fatalf("line %d garbled: %q, want %q", i, l, want)
		}
		if first < 0 {
			first = n
		} else if n != first+i {
			t.Fatalf("line %d is number %d, want %d: lines lost or misplaced", i, n, first+i)
		}
	}
	if last := first + len(got) - 1; last != lines-1 {
		t.Errorf("last kept line is %d, want %d", last, lines-1)
	}
	t.Logf("%d trims; kept lines %d..%d; peak data %d bytes; size %d", trims, first, lines-1, maxData, st.Size)
}

func TestTrimCollapseAppend(t *testing.T) {
	dir := t.TempDir()
	if !supports(t, dir, unix.FALLOC_FL_COLLAPSE_RANGE) {
		t.Skipf("%s does not support FALLOC_FL_COLLAPSE_RANGE", dir)
	}
	exerciseTrim(t, dir, trimCollapse, true)
}

func TestTrimPunchOwnOffset(t *testing.T) {
	dir := t.TempDir()
	if !supports(t, dir, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE) {
		t.Skipf("%s does not support FALLOC_FL_PUNCH_HOLE", dir)
	}
	exerciseTrim(t, dir, trimPunch, false)
}

// TestTrimTmpfs: tmpfs has no COLLAPSE_RANGE; console.log falls back to
// punching holes.
func TestTrimTmpfs(t *testing.T) {
	var sfs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Skip("/dev/shm is not a tmpfs")
	}
	dir, err := os.MkdirTemp("/dev/shm", "mvm-trim-")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(dir)
	exerciseTrim(t, dir, trimCollapse, true)
}

func TestTrimSmallFileUntouched(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, []byte("a\nb\n"), 0o600)
	if err := trimFile(path, 1<<20, trimCollapse); err != nil {
		t.Fatal(err)
	}
	if err := trimFile(filepath.Join(t.TempDir(), "missing"), 1, trimCollapse); err != nil {
		t.Errorf("missing file: %v", err)
	}
	got, _ := tailLines(path, 0, 1<<20)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("lines %q", got)
	}
	got, _ = tailLines(path, 1, 1<<20)
	if !slices.Equal(got, []string{"b"}) {
		t.Errorf("last line %q", got)
	}
	// A window that starts mid-line drops the fragment.
	got, _ = tailLines(path, 0, 3)
	if !slices.Equal(got, []string{"b"}) {
		t.Errorf("window of 3 bytes: %q", got)
	}
}

func TestSplitAndMerge(t *testing.T) {
	got := splitLines([]byte("\x00\x00\x00\nab\x00c\r\nlast"), 0)
	if !slices.Equal(got, []string{"abc", "last"}) {
		t.Errorf("splitLines: %q", got)
	}
	c := []string{"c1", "c2", "c3", "c4"}
	l := []string{"l1", "l2", "l3"}
	for _, tc := range []struct {
		n    int
		want []string
	}{
		{0, []string{"c1", "c2", "c3", "c4", "l1", "l2", "l3"}},
		{4, []string{"c3", "c4", "l2", "l3"}},
		{1, []string{"c4"}},
		{6, []string{"c2", "c3", "c4", "l1", "l2", "l3"}},
	} {
		if got := mergeLogs(c, l, tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("mergeLogs(n=%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	if got := mergeLogs(c, nil, 2); !slices.Equal(got, []string{"c3", "c4"}) {
		t.Errorf("mergeLogs without log = %q", got)
	}
	if got := mergeLogs(nil, l, 2); !slices.Equal(got, []string{"l2", "l3"}) {
		t.Errorf("mergeLogs without console = %q", got)
	}
}

// TestProcStatOddName: the command name may contain spaces and
// parentheses; fields are counted after the last ')'.
func TestProcStatOddName(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	odd := filepath.Join(t.TempDir(), "a) (b c")
	if err := os.Symlink(sleep, odd); err != nil {
		t.Fatal(err)
	}
	p, err := spawn(spawnSpec{bin: odd, args: []string{"5"}, dir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	st, err := readProcStat(p.pid)
	if err != nil || st.startTime != p.startTime || st.state == 'Z' {
		t.Fatalf("readProcStat: %+v, %v (spawn recorded %d)", st, err, p.startTime)
	}
	q, err := attach(p.pid, p.startTime, bootID())
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer q.close()
	if _, err := attach(p.pid, p.startTime+1, bootID()); !errors.Is(err, errGone) {
		t.Errorf("attach with another start time: %v, want errGone", err)
	}
	if _, err := attach(p.pid, p.startTime, "another-boot"); !errors.Is(err, errGone) {
		t.Errorf("attach with another boot: %v, want errGone", err)
	}
	if err := q.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if done, _ := p.wait(t.Context(), 5*time.Second); !done {
		t.Fatal("no exit after SIGTERM")
	}
	ei := p.reap()
	if !ei.known || ei.signal != "SIGTERM" || ei.code != -1 {
		t.Errorf("exit %+v, want killed by SIGTERM", ei)
	}
	// After the reap the pid is free; attach must not find the process.
	if _, err := attach(p.pid, p.startTime, bootID()); !errors.Is(err, errGone) {
		t.Errorf("attach after exit: %v, want errGone", err)
	}
	// An exit status is reported as such.
	sh, _ := exec.LookPath("sh")
	p2, err := spawn(spawnSpec{bin: sh, args: []string{"-c", "exit 7"}, dir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.close()
	p2.wait(t.Context(), 5*time.Second)
	if ei := p2.reap(); !ei.known || ei.code != 7 {
		t.Errorf("exit %+v, want status 7", ei)
	}
}
