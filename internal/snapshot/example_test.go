package snapshot_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/snapshot"
)

// The flow of a runtime: Begin, let Firecracker write the files, Commit;
// on restore, Verify, check compatibility, load the files.
func Example() {
	dir, _ := os.MkdirTemp("", "snapshots-")
	defer os.RemoveAll(dir)
	store, err := snapshot.Open(filepath.Join(dir, "snapshots"))
	if err != nil {
		log.Fatal(err)
	}

	p, err := store.Begin("snap-1")
	if err != nil {
		log.Fatal(err)
	}
	defer p.Abort() // no-op once committed
	// PUT /snapshot/create {"snapshot_type": "Full",
	//   "snapshot_path": p.StatePath(), "mem_file_path": p.MemPath()}
	// Here we write stand-in files instead.
	os.WriteFile(p.StatePath(), []byte("state"), 0o600)
	os.WriteFile(p.MemPath(), make([]byte, 1<<20), 0o600)
	m, err := p.Commit(snapshot.Manifest{
		VMID:               "vm-1",
		FirecrackerVersion: "1.10.1",
		Spec:               microvm.Spec{Kernel: "/vmlinux", RootDrive: microvm.Drive{Path: "/rootfs.ext4"}, VCPUs: 1, MemoryMiB: 1},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.ID, m.Type, m.Files[1].Name, m.Files[1].Size)

	// Restore.
	ctx := context.Background()
	if err := store.Verify(ctx, "snap-1"); err != nil {
		log.Fatal(err)
	}
	if err := m.LoadableBy("1.10.2", ""); err != nil {
		log.Fatal(err)
	}
	statePath, _, _ := store.Paths("snap-1")
	memPath, _ := store.MemoryFile(ctx, "snap-1")
	// PUT /snapshot/load {"snapshot_path": statePath,
	//   "mem_backend": {"backend_type": "File", "backend_path": memPath}}
	fmt.Println(filepath.Base(statePath), filepath.Base(memPath))
	fmt.Println(m.LoadableBy("1.11.0", ""))
	// Output:
	// snap-1 full memory 1048576
	// vmstate memory
	// snapshot "snap-1": incompatible: snapshot made by Firecracker 1.10.1 cannot be loaded by Firecracker 1.11.0: snapshots load only on the release (major.minor) that made them: snapshot corrupt or incompatible
}
