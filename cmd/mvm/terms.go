package main

import (
	"errors"
	"strings"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/image/store"
)

// userTerms are the rewordings inUserTerms applies: where a library's
// message names its own package, field or argument, the command line's
// word for the same thing. Each applies to an error that matches its
// sentinel (nil: any error whose message has the words).
var userTerms = []struct {
	is       error
	old, new string
}{
	// The sentinels' texts, which repeat what their wrapping already says.
	{store.ErrNotFound, store.ErrNotFound.Error(), "not found"},
	{store.ErrExists, store.ErrExists.Error(), "already exists"},
	{store.ErrInUse, store.ErrInUse.Error(), "in use"},
	{store.ErrCorrupt, store.ErrCorrupt.Error(), "corrupt"},
	{store.ErrInvalidName, store.ErrInvalidName.Error(), "invalid image name"},
	{fcapi.ErrUnsupported, fcapi.ErrUnsupported.Error(), "not supported by this firecracker version"},
	{fcapi.ErrInvalidArgument, fcapi.ErrInvalidArgument.Error(), "invalid argument"},
	// The Firecracker API client's prefix, before the request it names
	// ("fcapi: PUT /actions: EOF").
	{nil, "fcapi: ", "firecracker API "},
	// The force argument of image and snapshot removal is --force.
	{store.ErrInUse, ", or force)", ", or use --force)"},
	{microvm.ErrSnapshotInUse, ", or force)", ", or use --force)"},
	// Spec fields are the flags of mvm create.
	{microvm.ErrInvalidArgument, "needs spec.track_dirty_pages", "needs a VM created with --track-dirty-pages"},
	{microvm.ErrUnsupported, "(spec.vsock)", "(mvm create --vsock-cid)"},
}

// inUserTerms rewords err's message in the command line's terms (see
// userTerms): the one place where mvm changes the libraries' wording, so
// that stderr says "image \"x\": not found" and "--force", not "image
// store: image not found" and "force". Nothing is dropped but the
// libraries' names for themselves. The result matches what err matches.
func inUserTerms(err error) error {
	msg := err.Error()
	for _, t := range userTerms {
		if (t.is == nil || errors.Is(err, t.is)) && strings.Contains(msg, t.old) {
			msg = strings.ReplaceAll(msg, t.old, t.new)
		}
	}
	if msg == err.Error() {
		return err
	}
	return &rewordedError{msg: msg, err: err}
}

// rewordedError is an error with its message reworded; it matches what
// the original matched.
type rewordedError struct {
	msg string
	err error
}

func (e *rewordedError) Error() string { return e.msg }
func (e *rewordedError) Unwrap() error { return e.err }
