package memory

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mvm-dev/microvm"
)

// Event bounds: the runtime keeps the newest keptEvents for replays
// (EventOptions.Since); a subscriber that falls more than subscriberQueue
// events behind loses the oldest it has not received.
const (
	keptEvents      = 1024
	subscriberQueue = 4096
)

var (
	_ microvm.EventSource = (*Runtime)(nil)
	_ microvm.StatsReader = (*Runtime)(nil)
)

// hub fans events out to subscribers without ever blocking the publisher.
type hub struct {
	mu     sync.Mutex
	closed bool
	kept   []microvm.Event
	subs   map[*subscriber]struct{}
}

type subscriber struct {
	mu    sync.Mutex
	queue []microvm.Event
	wake  chan struct{} // 1-buffered
	done  bool
}

func (s *subscriber) push(e microvm.Event) {
	s.mu.Lock()
	if len(s.queue) >= subscriberQueue {
		s.queue = s.queue[1:]
	}
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) stop() {
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Events delivers the VMs' lifecycle events (see [microvm.EventSource])
// until ctx ends or the runtime closes. This runtime keeps its newest
// 1024 events for replays.
func (r *Runtime) Events(ctx context.Context, opts *microvm.EventOptions) (<-chan microvm.Event, error) {
	if err := r.enter(ctx); err != nil {
		return nil, err
	}
	s := &subscriber{wake: make(chan struct{}, 1)}
	h := &r.events
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("memory: events: %w", microvm.ErrClosed)
	}
	if opts != nil && !opts.Since.IsZero() {
		for _, e := range h.kept {
			if !e.Time.Before(opts.Since) {
				s.queue = append(s.queue, e)
			}
		}
	}
	if h.subs == nil {
		h.subs = map[*subscriber]struct{}{}
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	ch := make(chan microvm.Event)
	go func() {
		defer close(ch)
		defer func() { h.mu.Lock(); delete(h.subs, s); h.mu.Unlock() }()
		for {
			s.mu.Lock()
			q, done := s.queue, s.done
			s.queue = nil
			s.mu.Unlock()
			for _, e := range q {
				select {
				case ch <- e:
				case <-ctx.Done():
					return
				}
			}
			if done {
				return
			}
			if len(q) > 0 {
				continue
			}
			select {
			case <-s.wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// publish records an event of v (v.mu held, or v not yet published).
func (r *Runtime) publish(v *vm, t time.Time, typ microvm.EventType, reason, snap string) {
	r.publishEvent(microvm.Event{Time: t.UTC(), VM: v.id, Type: typ, Status: v.status, Reason: reason, Snapshot: snap, PID: os.Getpid()})
}

// publishEvent records e.
func (r *Runtime) publishEvent(e microvm.Event) {
	h := &r.events
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if len(h.kept) >= keptEvents {
		h.kept = h.kept[1:]
	}
	h.kept = append(h.kept, e)
	for s := range h.subs {
		s.push(e)
	}
}

// closeEvents ends every subscription (at Close).
func (r *Runtime) closeEvents() {
	h := &r.events
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		s.stop()
	}
}

// opEvents maps a transition to its event.
var opEvents = map[microvm.Op]microvm.EventType{
	microvm.OpStart: microvm.EventStarted, microvm.OpStop: microvm.EventStopped,
	microvm.OpPause: microvm.EventPaused, microvm.OpResume: microvm.EventResumed,
	microvm.OpDestroy: microvm.EventDestroyed, microvm.OpCrash: microvm.EventCrashed,
	microvm.OpShutdown: microvm.EventStopped,
}

// publishOp records the event of a transition; logLine is the VM's log
// line, which carries a crash's reason.
func (r *Runtime) publishOp(v *vm, t time.Time, op microvm.Op, logLine string) {
	typ, ok := opEvents[op]
	if !ok {
		return
	}
	reason := ""
	switch op {
	case microvm.OpCrash:
		reason = strings.TrimPrefix(logLine, "failed: ")
	case microvm.OpShutdown:
		reason = "the guest shut down"
	}
	r.publish(v, t, typ, reason, "")
}

// Stats returns the VM's statistics: Options.Stats's figures when set,
// else zero counters for each of the spec's drives and interfaces (there
// is no process to measure).
func (r *Runtime) Stats(ctx context.Context, id string, opts *microvm.StatsOptions) (microvm.VMStats, error) {
	var out microvm.VMStats
	err := r.locked(ctx, "stats of", id, func(v *vm) error {
		out = microvm.VMStats{ID: id, Status: v.status, Time: r.now().UTC()}
		if r.stats != nil {
			out = r.stats(id)
			out.ID, out.Status = id, v.status
			return nil
		}
		h := &microvm.HypervisorStats{Drives: map[string]microvm.BlockStats{"rootfs": {}}}
		for _, d := range v.spec.Drives {
			h.Drives[d.ID] = microvm.BlockStats{}
		}
		for _, n := range v.spec.Network {
			if h.Interfaces == nil {
				h.Interfaces = map[string]microvm.NetStats{}
			}
			h.Interfaces[n.ID] = microvm.NetStats{}
		}
		out.Hypervisor = h
		return nil
	})
	return out, err
}
