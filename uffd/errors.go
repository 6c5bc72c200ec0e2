package uffd

import "errors"

// Sentinel errors; every error the package returns for these conditions
// wraps one of them, with details naming the field or file.
var (
	// ErrConfig reports an invalid Config.
	ErrConfig = errors.New("uffd: invalid config")
	// ErrMemFile reports a memory file that cannot be served.
	ErrMemFile = errors.New("uffd: unusable memory file")
	// ErrAcceptTimeout reports that no peer connected and completed the
	// handshake within Config.AcceptTimeout. The socket has been removed.
	ErrAcceptTimeout = errors.New("uffd: accept timeout")
	// ErrBadHandshake reports a handshake that breaks the protocol:
	// malformed JSON, no userfaultfd, no regions, a region outside the
	// memory file, overlapping regions, an unsupported page size or an
	// unexpected peer.
	ErrBadHandshake = errors.New("uffd: bad handshake")
	// ErrClosed is returned by Serve after Close.
	ErrClosed = errors.New("uffd: server closed")

	errWoken = errors.New("uffd: woken")
)
