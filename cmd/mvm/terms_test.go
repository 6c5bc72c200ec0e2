package main

import (
	"errors"
	"fmt"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// TestInUserTerms: the libraries' own names (fcapi:, spec fields, the
// force argument) become the command line's, the rest of the message is
// kept, and the reworded error matches what the original matched.
func TestInUserTerms(t *testing.T) {
	unsupported := &fcapi.UnsupportedError{Op: "PUT /snapshot/load", Feature: "network_overrides",
		Min: fcapi.Version{Major: 1, Minor: 12}, Target: fcapi.Version{Major: 1, Minor: 10, Patch: 1}}
	for _, c := range []struct {
		err  error
		want string
		is   error
	}{
		{fmt.Errorf("restore vm %q: %w", "v", unsupported),
			`restore vm "v": firecracker API PUT /snapshot/load: network_overrides needs firecracker >= 1.12 (target 1.10.1)`, fcapi.ErrUnsupported},
		{fmt.Errorf("create vm %q: %w", "v", &fcapi.FieldError{Op: "PUT /vsock", Field: "guest_cid", Rule: "must be >= 3"}),
			`create vm "v": firecracker API PUT /vsock: guest_cid: must be >= 3`, fcapi.ErrInvalidArgument},
		{fmt.Errorf("start: %w", fmt.Errorf("%w: %w", microvm.ErrUnsupported, fcapi.ErrUnsupported)),
			"start: " + microvm.ErrUnsupported.Error() + ": not supported by this firecracker version", microvm.ErrUnsupported},
		{fmt.Errorf("%w: vm %q has no vsock device (spec.vsock), the guest agent's only way in", microvm.ErrUnsupported, "v"),
			microvm.ErrUnsupported.Error() + `: vm "v" has no vsock device (mvm create --vsock-cid), the guest agent's only way in`, microvm.ErrUnsupported},
		{fmt.Errorf("delete snapshot %q: VM(s) a restored from it still map its memory (destroy or stop them first, or force): %w", "s", microvm.ErrSnapshotInUse),
			`delete snapshot "s": VM(s) a restored from it still map its memory (destroy or stop them first, or use --force): ` + microvm.ErrSnapshotInUse.Error(), microvm.ErrSnapshotInUse},
		// Words outside an error of the rule's kind are left as they are.
		{errors.New("x (or force)"), "x (or force)", nil},
		{errors.New("a spec.track_dirty_pages"), "a spec.track_dirty_pages", nil},
	} {
		got := inUserTerms(c.err)
		if got.Error() != c.want {
			t.Errorf("inUserTerms(%q)\n = %q\nwant %q", c.err, got, c.want)
		}
		if c.is != nil && !errors.Is(got, c.is) {
			t.Errorf("inUserTerms(%q) no longer matches %v", c.err, c.is)
		}
	}
}
