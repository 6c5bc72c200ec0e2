package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCLIEventsRename: mvm events shows a rename once, with both names;
// mvm events NAME follows the VM across the rename (and not the new VM
// that takes its old name), live and in a replay.
func TestCLIEventsRename(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	kernel, rootfs, rootfs2 := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "rootfs2.ext4")
	for _, f := range []string{kernel, rootfs, rootfs2} {
		if err := os.WriteFile(f, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	allCmd, all := c.background("events", "-o", "json", "--since", "1h")
	oneCmd, one := c.background("events", "cli-a", "--since", "1h")
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	c.ok("rename", "cli-a", "cli-b")
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs2, "--memory", "32")
	c.ok("start", "cli-b")
	c.ok("rm", "cli-a")
	c.ok("rm", "cli-b")

	var got []string
	for len(got) == 0 || got[len(got)-1] != "cli-b destroyed " {
		l := waitLine(t, all, func(string) bool { return true })
		var e struct{ VM, Type, From string }
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("event line %q: %v", l, err)
		}
		got = append(got, e.VM+" "+e.Type+" "+e.From)
	}
	want := []string{"cli-a created ", "cli-b renamed cli-a", "cli-a created ", "cli-b started ", "cli-a destroyed ", "cli-b destroyed "}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n%q\nwant\n%q", got, want)
	}
	interrupt(t, allCmd)

	// Text lines: name, event, status[, from=OLD]; what NAME follows.
	follow := func(lines <-chan string) []string {
		var out []string
		for len(out) == 0 || !strings.Contains(out[len(out)-1], "destroyed") {
			f := strings.Fields(waitLine(t, lines, func(string) bool { return true }))
			out = append(out, strings.Join(f[1:], " "))
		}
		return out
	}
	wantA := []string{"cli-a created created", "cli-b renamed created from=cli-a", "cli-b started running", "cli-b destroyed destroyed"}
	if got := follow(one); !slices.Equal(got, wantA) {
		t.Errorf("events cli-a:\n%q\nwant\n%q", got, wantA)
	}
	interrupt(t, oneCmd)
	bCmd, b := c.background("events", "cli-b", "--since", "1h")
	if got, want := follow(b), wantA[1:]; !slices.Equal(got, want) {
		t.Errorf("events cli-b (replay):\n%q\nwant\n%q", got, want)
	}
	interrupt(t, bCmd)
}
