//go:build linux

package network

import (
	"context"
	"errors"
	"time"
)

// Warm pool: a goroutine started by New (not tied to any request context)
// keeps PoolSize slots built, leased to this Manager's owner identity and
// named by no vm record. Setup takes one and only records the lease; taking one
// wakes the refiller. Close stops the goroutine and removes the slots left.
// If the process dies, Cleanup in any later Manager removes them (their
// owner is dead).

// Refill back-off after a failed build.
const (
	refillBackoffMin = 100 * time.Millisecond
	refillBackoffMax = 10 * time.Second
)

// takePooled pops a warm slot, or returns nil.
func (m *Manager) takePooled() *leaseRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.pooled) == 0 {
		return nil
	}
	l := m.pooled[0]
	m.pooled = m.pooled[1:]
	return l
}

// kick wakes the refiller.
func (m *Manager) kick() {
	select {
	case m.refill <- struct{}{}:
	default:
	}
}

// pooledCount returns the number of warm slots.
func (m *Manager) pooledCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pooled)
}

func (m *Manager) refillLoop(ctx context.Context) {
	defer close(m.done)
	backoff := time.Duration(0)
	for {
		for ctx.Err() == nil && m.pooledCount() < m.poolSize {
			if err := m.buildPooled(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrEgressMissing) {
					m.log.Debug("network: warm pool waits (for a free address or the egress interface)", "err", err)
				} else {
					m.log.Warn("network: warm pool refill failed", "err", err)
				}
				backoff = min(max(2*backoff, refillBackoffMin), refillBackoffMax)
				break
			}
			backoff = 0
		}
		var retry <-chan time.Time
		var t *time.Timer
		if backoff > 0 {
			t = time.NewTimer(backoff)
			retry = t.C
		}
		select {
		case <-ctx.Done():
		case <-m.refill:
		case <-retry:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// buildPooled builds one warm slot and adds it to the pool.
func (m *Manager) buildPooled(ctx context.Context) error {
	if err := m.egressReady(ctx); err != nil {
		return err // a warm slot is for a new VM network, which needs it
	}
	l, err := m.allocate(ctx, "")
	if err != nil {
		return err
	}
	if err := m.build(ctx, l, Options{}); err != nil {
		if !errors.Is(err, errCrash) {
			m.discard(l.Name)
		}
		return err
	}
	l.State = stateBuilt
	if err := m.putLease(ctx, l); err != nil {
		m.discard(l.Name)
		return err
	}
	m.mu.Lock()
	m.pooled = append(m.pooled, l)
	m.mu.Unlock()
	return nil
}
