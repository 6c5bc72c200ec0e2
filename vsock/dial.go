package vsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// ErrNoListener is matched by the error of [Dial] when the guest never
// accepted the connection: Firecracker closed it without "OK" until the
// context ended (no guest listener on the port, or the guest not running).
var ErrNoListener = errors.New("vsock: no guest listener")

// maxHandshakeLine bounds Firecracker's answer ("OK 1073741824\n").
const maxHandshakeLine = 64

// Dial connects to port of the guest behind the Firecracker vsock unix
// socket at uds, retrying every few milliseconds (doubling to 100 ms) while
// the socket is missing, refuses connections, or Firecracker closes the
// connection without an answer (the guest is booting or has no listener),
// until ctx ends. The returned connection is a plain stream to the guest
// program; ctx bounds only the dial.
func Dial(ctx context.Context, uds string, port uint32) (net.Conn, error) {
	delay := 2 * time.Millisecond
	var last error
	for {
		c, err := dialOnce(ctx, uds, port)
		if err == nil {
			return c, nil
		}
		var pe *protocolError
		if errors.As(err, &pe) {
			return nil, err // an answer other than OK: retrying will not help
		}
		last = err
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("vsock: connect to guest port %d through %s: %w (last attempt: %v): %w",
				port, uds, ErrNoListener, last, context.Cause(ctx))
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// protocolError is an answer that is neither OK nor a closed connection.
type protocolError struct{ answer string }

func (e *protocolError) Error() string {
	return fmt.Sprintf("vsock: unexpected answer to CONNECT: %q", e.answer)
}

// dialOnce makes one connection attempt and handshake.
func dialOnce(ctx context.Context, uds string, port uint32) (net.Conn, error) {
	c, err := dialUnix(ctx, uds)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, err
	}
	// Read the answer a byte at a time: whatever follows the newline
	// belongs to the guest program and must stay in the connection.
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := c.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > maxHandshakeLine {
				c.Close()
				return nil, &protocolError{answer: string(line)}
			}
			continue
		}
		if err != nil {
			c.Close()
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("connection closed before an answer")
			}
			return nil, err
		}
	}
	if !stop() {
		c.Close()
		return nil, context.Cause(ctx)
	}
	if !isOK(line) {
		c.Close()
		return nil, &protocolError{answer: string(line)}
	}
	return c, nil
}

// isOK reports whether line is "OK <number>".
func isOK(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("OK "))
	if !ok {
		return false
	}
	_, err := strconv.ParseUint(string(rest), 10, 32)
	return err == nil
}
