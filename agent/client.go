package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/mvm-dev/microvm/vsock"
)

// Client speaks the protocol over one connection (a vsock connection from
// [vsock.Dial], a serial console, a pipe). Calls are serialised: one
// request is in flight at a time. A call whose context ends, or whose
// connection fails, breaks the Client (later calls fail at once), since a
// late answer would otherwise be taken for the next request's.
type Client struct {
	mu     sync.Mutex
	conn   io.ReadWriteCloser
	r      *bufio.Reader
	nextID uint64
	broken error
}

// NewClient returns a Client over conn; Close closes conn. When conn has
// deadlines (a net.Conn, an *os.File on the poller), a call's context
// interrupts a blocked read or write; otherwise the call returns when its
// context ends but the blocked read keeps running until conn is closed.
func NewClient(conn io.ReadWriteCloser) *Client {
	return &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

type deadliner interface{ SetDeadline(time.Time) error }

// ErrBroken is matched by the error of a call on a Client whose earlier
// call was interrupted or whose connection failed.
var ErrBroken = errors.New("agent: client broken by an earlier failure")

// Call sends op with args (nil for none) and decodes the result into
// result (nil to discard it). An error the agent reported is an [*Error].
func (c *Client) Call(ctx context.Context, op string, args, result any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("agent: %s: %w (%v)", op, ErrBroken, c.broken)
	}
	c.nextID++
	req := Request{ID: c.nextID, Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("agent: %s: encode args: %w", op, err)
		}
		req.Args = b
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("agent: %s: %w", op, err)
	}
	resp, err := c.roundTrip(ctx, append(line, '\n'), req.ID)
	if err != nil {
		c.broken = err
		return fmt.Errorf("agent: %s: %w", op, err)
	}
	if resp.Error != nil {
		resp.Error.Op = op
		return resp.Error
	}
	if result != nil {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("agent: %s: decode result: %w", op, err)
		}
	}
	return nil
}

// roundTrip writes line and reads the response with id, skipping lines that
// are not JSON objects (console noise).
func (c *Client) roundTrip(ctx context.Context, line []byte, id uint64) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, err
	}
	type result struct {
		resp Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.exchange(line, id)
		done <- result{resp, err}
	}()
	select {
	case r := <-done:
		return r.resp, r.err
	case <-ctx.Done():
		if d, ok := c.conn.(deadliner); ok {
			d.SetDeadline(time.Unix(1, 0))
			<-done // the exchange returns at once
		}
		return Response{}, context.Cause(ctx)
	}
}

func (c *Client) exchange(line []byte, id uint64) (Response, error) {
	if _, err := c.conn.Write(line); err != nil {
		return Response{}, err
	}
	for {
		b, err := readLine(c.r)
		if err != nil && (len(b) == 0 || !errors.Is(err, io.EOF)) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Response{}, err
		}
		if len(b) == 0 || b[0] != '{' {
			continue
		}
		var resp struct {
			Response
			Op string `json:"op"`
		}
		if err := json.Unmarshal(b, &resp); err != nil {
			return Response{}, fmt.Errorf("bad response line %q: %w", truncate(string(b), 120), err)
		}
		if resp.Op != "" {
			continue // a request echoed by a terminal not yet in raw mode
		}
		if resp.Result == nil && resp.Error == nil {
			return Response{}, fmt.Errorf("response line %q has neither result nor error", truncate(string(b), 120))
		}
		if resp.ID != id {
			if resp.ID == 0 && resp.Error != nil {
				return resp.Response, nil // the agent could not read the request at all
			}
			return Response{}, fmt.Errorf("response to request %d while waiting for %d", resp.ID, id)
		}
		return resp.Response, nil
	}
}

// Ping returns the agent's version and uptime.
func (c *Client) Ping(ctx context.Context) (PingResult, error) {
	var r PingResult
	err := c.Call(ctx, OpPing, nil, &r)
	return r, err
}

// Counter returns the next value of the agent's counter.
func (c *Client) Counter(ctx context.Context) (uint64, error) {
	var r CounterResult
	err := c.Call(ctx, OpCounter, nil, &r)
	return r.Value, err
}

// MMDS reads a path of the metadata service from inside the guest.
func (c *Client) MMDS(ctx context.Context, a MMDSArgs) (MMDSResult, error) {
	var r MMDSResult
	err := c.Call(ctx, OpMMDS, a, &r)
	return r, err
}

// Dial makes a TCP connection from inside the guest. A failed connection
// is reported in the result (OK false), not as an error.
func (c *Client) Dial(ctx context.Context, a DialArgs) (DialResult, error) {
	var r DialResult
	err := c.Call(ctx, OpDial, a, &r)
	return r, err
}

// Read reads bytes of a guest file or block device and times it.
func (c *Client) Read(ctx context.Context, a ReadArgs) (ReadResult, error) {
	var r ReadResult
	err := c.Call(ctx, OpRead, a, &r)
	return r, err
}

// Poweroff asks the agent to shut the guest down; it returns once the
// agent has acknowledged (the shutdown follows).
func (c *Client) Poweroff(ctx context.Context) error {
	return c.Call(ctx, OpPoweroff, nil, nil)
}

// DialVsock connects to the agent of the guest behind the Firecracker vsock
// socket uds (VM.Backend.VsockPath) on port (0 means DefaultPort), retrying
// while the guest boots, until ctx ends; see [vsock.Dial].
func DialVsock(ctx context.Context, uds string, port uint32) (*Client, error) {
	if port == 0 {
		port = DefaultPort
	}
	conn, err := vsock.Dial(ctx, uds, port)
	if err != nil {
		return nil, err
	}
	return NewClient(conn), nil
}
