package memory_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

// exampleSpec is a VM spec whose files need not exist (the memory runtime
// does not open them).
var exampleSpec = microvm.Spec{
	Kernel:    "/var/lib/mvm/vmlinux",
	RootDrive: microvm.Drive{Path: "/var/lib/mvm/rootfs.ext4"},
	VCPUs:     1,
	MemoryMiB: 128,
}

// Optional capabilities are found by type assertion on any
// microvm.Runtime: here the guest agent (exec, files, env, secrets), which
// the memory runtime fakes so that code written against it can be tested
// without a guest.
func Example_guestAgent() {
	ctx := context.Background()
	var rt microvm.Runtime = memory.New(nil)
	defer rt.Close()
	rt.Create(ctx, "box", exampleSpec)
	rt.Start(ctx, "box")

	ga, ok := rt.(microvm.GuestAgent)
	if !ok {
		fmt.Println("this runtime has no guest agent")
		return
	}
	if err := ga.WriteFile(ctx, "box", "/tmp/greeting", strings.NewReader("hello\n"), nil); err != nil {
		fmt.Println(err)
		return
	}
	var out bytes.Buffer
	res, err := ga.Exec(ctx, "box", microvm.ExecRequest{Args: []string{"cat", "/tmp/greeting"}, Stdout: &out})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("exit %d: %s", res.ExitCode, out.String())
	// Output:
	// exit 0: hello
}

// Lifecycle events are delivered to every subscriber until its context
// ends (with the firecracker runtime, also those caused by other
// processes using the same state directory).
func Example_events() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var rt microvm.Runtime = memory.New(nil)
	defer rt.Close()

	events, err := rt.(microvm.EventSource).Events(ctx, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	rt.Create(ctx, "web-1", exampleSpec)
	rt.Start(ctx, "web-1")
	rt.Destroy(ctx, "web-1")
	for range 3 {
		e := <-events
		fmt.Println(e.VM, e.Type, e.Status)
	}
	// Output:
	// web-1 created created
	// web-1 started running
	// web-1 destroyed destroyed
}

// A warm pool hands a VM over by renaming it; the event stream records
// the rename once, under the new id with the old in From, and
// microvm.FollowVM follows the VM across it (not the new VM that takes
// its old id).
func Example_renamedEvent() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var rt microvm.Runtime = memory.New(nil)
	defer rt.Close()

	events, err := rt.(microvm.EventSource).Events(ctx, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	rt.Create(ctx, "pool-1", exampleSpec)
	rt.(microvm.Renamer).Rename(ctx, "pool-1", "alice")
	rt.Create(ctx, "pool-1", exampleSpec) // the pool refills
	rt.Start(ctx, "alice")
	keep := microvm.FollowVM("pool-1")
	for range 4 {
		e := <-events
		if keep(e) {
			fmt.Println(strings.TrimSpace(e.VM + " " + string(e.Type) + " " + e.From))
		}
	}
	// Output:
	// pool-1 created
	// alice renamed pool-1
	// alice started
}
