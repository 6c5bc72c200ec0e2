//go:build linux

package agent_test

import (
	"context"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// The benchmarks run the agent's service and client in this process over
// a unix socket (no guest, no vsock): the protocol's own cost.

func BenchmarkExecTrue(b *testing.B) {
	ta := startAgent(b, "")
	ctx := context.Background()
	for b.Loop() {
		if res, err := ta.g.Exec(ctx, microvm.ExecRequest{Args: []string{"true"}}); err != nil || res.ExitCode != 0 {
			b.Fatal(res, err)
		}
	}
}

func BenchmarkExecStdout(b *testing.B) {
	ta := startAgent(b, "")
	ctx := context.Background()
	const size = 256 << 20
	b.SetBytes(size)
	for b.Loop() {
		n := &countWriter{}
		if _, err := ta.g.Exec(ctx, microvm.ExecRequest{Args: []string{"dd", "if=/dev/zero", "bs=1M", "count=256", "status=none"}, Stdout: n}); err != nil || n.n != size {
			b.Fatal(err, n.n)
		}
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func BenchmarkWriteFile(b *testing.B) {
	ta := startAgent(b, "")
	ctx := context.Background()
	const size = 128 << 20
	buf := make([]byte, size)
	rand.NewChaCha8([32]byte{}).Read(buf)
	b.SetBytes(size)
	for b.Loop() {
		if err := ta.g.WriteFile(ctx, filepath.Join(ta.files, "f"), &sliceReader{b: buf}, &microvm.WriteFileOptions{Size: size}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadFile(b *testing.B) {
	ta := startAgent(b, "")
	ctx := context.Background()
	const size = 128 << 20
	p := filepath.Join(ta.files, "f")
	randomFile(b, p, size, 5)
	b.SetBytes(size)
	for b.Loop() {
		if _, err := ta.g.ReadFile(ctx, p, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// BenchmarkForkExecTrueFloor is the floor: os/exec of true in this process,
// with three pipes, and no protocol.
func BenchmarkForkExecTrueFloor(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command("true")
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}
