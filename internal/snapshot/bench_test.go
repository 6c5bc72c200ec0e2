package snapshot

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

// Benchmarks on a 256 MiB guest memory file (throughput is reported per
// byte of logical file size; the files are in the page cache, as right
// after Firecracker wrote them). "sparse" files hold 1% data in 64 KiB
// extents spread over the file, the rest holes, like a diff of a mostly
// idle guest; "dense" files are all data, like a full snapshot.
//
//	go test -run '^$' -bench . -benchtime 5x ./snapshot/
const benchSize = 256 << 20

func benchFile(b *testing.B, dir, name string, dense bool) string {
	b.Helper()
	path := filepath.Join(dir, name)
	if dense {
		writeFile(b, path, pseudo(1, benchSize))
		return path
	}
	var exts []extent
	const ext = 64 << 10
	for off := int64(0); off < benchSize; off += 100 * ext { // 1% data
		exts = append(exts, extent{off + 37*page, pseudo(uint64(off), ext)})
	}
	writeSparse(b, path, benchSize, exts)
	return path
}

func BenchmarkHash(b *testing.B) {
	dir := b.TempDir()
	for _, layout := range []string{"dense", "sparse"} {
		path := benchFile(b, dir, layout, layout == "dense")
		for _, how := range []struct {
			name string
			fn   func(context.Context, *os.File, int64) (digest, error)
		}{{"seek-data", hashFile}, {"read-all", hashFileDense}} {
			b.Run(layout+"/"+how.name, func(b *testing.B) {
				f, err := os.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				b.SetBytes(benchSize)
				for b.Loop() {
					if _, err := how.fn(context.Background(), f, benchSize); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSHA256 is the ceiling: crypto/sha256 over a buffer in memory.
func BenchmarkSHA256(b *testing.B) {
	buf := pseudo(1, copyBufSize)
	h := sha256.New()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		h.Write(buf)
	}
}

func BenchmarkVerify(b *testing.B) {
	s := openStore(b)
	createFull(b, s, "dense", "vm", pseudo(1, benchSize))
	b.SetBytes(benchSize)
	for b.Loop() {
		if err := s.Verify(context.Background(), "dense"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMergeSparse(b *testing.B) {
	dir := b.TempDir()
	dense := benchFile(b, dir, "dense", true)
	sparse := benchFile(b, dir, "sparse", false)
	for _, c := range []struct{ name, parent string }{
		{"dense-parent", dense},   // a full snapshot's memory, as Firecracker writes it
		{"sparse-parent", sparse}, // holes in the parent are kept, not copied
	} {
		b.Run(c.name, func(b *testing.B) {
			dst := filepath.Join(dir, "merged")
			b.SetBytes(benchSize)
			for b.Loop() {
				if err := MergeSparse(dst, c.parent, sparse); err != nil {
					b.Fatal(err)
				}
			}
			os.Remove(dst)
		})
	}
}

// BenchmarkCommitDiff is a whole diff Commit: merge onto a dense 256 MiB
// parent, hash the result, fsync, publish.
func BenchmarkCommitDiff(b *testing.B) {
	s := openStore(b)
	createFull(b, s, "base", "vm", pseudo(1, benchSize))
	var exts []extent
	for off := int64(0); off < benchSize; off += 100 << 16 {
		exts = append(exts, extent{off, pseudo(uint64(off), 64<<10)})
	}
	b.SetBytes(benchSize)
	i := 0
	for b.Loop() {
		b.StopTimer()
		id := "d" + string(rune('a'+i%26)) + string(rune('a'+i/26%26))
		i++
		p, err := s.Begin(id)
		if err != nil {
			b.Fatal(err)
		}
		writeFile(b, p.StatePath(), pseudo(2, 3*page))
		writeSparse(b, p.MemPath(), benchSize, exts)
		b.StartTimer()
		if _, err := createCommit(p, "base"); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Delete(id, true)
		b.StartTimer()
	}
}

func createCommit(p *Pending, parent string) (Manifest, error) {
	return p.Commit(Manifest{VMID: "vm", Type: "diff", Parent: parent, FirecrackerVersion: testFC, Spec: testSpec(benchSize >> 20)})
}

// BenchmarkMergeAndHash compares merging then hashing with the pipelined
// mergeAndHash that Commit uses (dense 256 MiB parent, 1% diff; no fsync).
func BenchmarkMergeAndHash(b *testing.B) {
	dir := b.TempDir()
	parent, _, _ := openRegularB(b, benchFile(b, dir, "dense", true))
	diff, _, _ := openRegularB(b, benchFile(b, dir, "sparse", false))
	run := func(b *testing.B, fn func(out *os.File) error) {
		b.SetBytes(benchSize)
		for b.Loop() {
			out, err := os.CreateTemp(dir, "out")
			if err != nil {
				b.Fatal(err)
			}
			if err := fn(out); err != nil {
				b.Fatal(err)
			}
			out.Close()
			os.Remove(out.Name())
		}
	}
	ctx := context.Background()
	b.Run("sequential", func(b *testing.B) {
		run(b, func(out *os.File) error {
			if _, err := mergeInto(ctx, out, parent, benchSize, diff, benchSize, func(int64) {}); err != nil {
				return err
			}
			_, err := hashFile(ctx, out, benchSize)
			return err
		})
	})
	b.Run("pipelined", func(b *testing.B) {
		run(b, func(out *os.File) error {
			_, _, err := mergeAndHash(ctx, out, parent, benchSize, diff, benchSize)
			return err
		})
	})
}

func openRegularB(b *testing.B, path string) (*os.File, int64, error) {
	f, n, err := openRegular(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f, n, nil
}
