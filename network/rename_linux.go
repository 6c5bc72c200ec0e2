//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
)

// Rename gives oldID's network to newID, as it is: the same slot (lease,
// namespace, TAP, veth, addresses, firewall and its policy, TAP owner),
// so a Firecracker process running in the slot keeps its network. No
// kernel object is touched: every one is named after the slot, never
// after the VM; only the vm record (netvm/<id>) and the lock that
// serialises a VM's operations are keyed by the VM id. It holds both ids'
// locks (in id order, so that two Renames cannot deadlock).
//
// It fails with an error matching ErrNotFound when oldID has no network
// and ErrExists when newID has one. A stale record of either id (naming a
// lease that is gone) is removed on the way.
//
// It is crash-safe without any recovery of its own: newID's record is
// written first with a fresh token, which makes it stale (the lease holds
// another token); rewriting the lease with that token is the commit, which
// makes oldID's record stale in turn; then oldID's record is deleted. A
// crash at any step leaves the slot with exactly one VM, oldID before the
// commit and newID after it, and at most one stale record, which the next
// Setup, Rename, Teardown or Cleanup of that id removes.
func (m *Manager) Rename(ctx context.Context, oldID, newID string) (*Slot, error) {
	if err := validateVMID(oldID); err != nil {
		return nil, err
	}
	if err := validateVMID(newID); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.Field = "newID"
		}
		return nil, err
	}
	if oldID == newID {
		return nil, &FieldError{Field: "newID", Rule: fmt.Sprintf("%q is the VM's own id", newID), Err: ErrInvalidVMID}
	}
	if err := m.enter(); err != nil {
		return nil, err
	}
	defer m.leave()
	first, second := oldID, newID
	if second < first {
		first, second = second, first
	}
	unlock1, err := m.lockVM(ctx, first)
	if err != nil {
		return nil, err
	}
	defer unlock1()
	unlock2, err := m.lockVM(ctx, second)
	if err != nil {
		return nil, err
	}
	defer unlock2()

	vr, l, status, err := m.lookup(oldID)
	if err != nil {
		return nil, fmt.Errorf("network: rename: %w", err)
	}
	if status == staleRecord {
		if err := m.dropStale(oldID); err != nil {
			return nil, err
		}
	}
	if status != assigned {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, oldID)
	}
	_, _, nstatus, err := m.lookup(newID)
	switch {
	case err != nil:
		return nil, fmt.Errorf("network: rename: %w", err)
	case nstatus == assigned:
		return nil, fmt.Errorf("network: rename %q to %q: %w", oldID, newID, ErrExists)
	case nstatus == staleRecord:
		if err := m.dropStale(newID); err != nil {
			return nil, err
		}
	}

	fail := func(err error) (*Slot, error) {
		if !errors.Is(err, errCrash) {
			if derr := m.store.Delete(kindVM, newID); derr != nil {
				m.log.Warn("network: rename: remove the new record after failure (stale: Cleanup removes it)", "vm", newID, "err", derr)
			}
		}
		return nil, err
	}
	if err := m.step("rename-record"); err != nil {
		return nil, err
	}
	next := vr
	next.Token = newToken()
	if err := m.store.Create(kindVM, newID, &next); err != nil {
		return nil, fmt.Errorf("network: vm %q: record: %w", newID, err)
	}
	if err := m.step("rename-commit"); err != nil {
		return fail(err)
	}
	if err := m.retoken(ctx, &l, vr.Token, next.Token); err != nil {
		var cur leaseRecord
		if gerr := m.store.Get(kindLease, l.Name, &cur); gerr != nil || cur.Token == next.Token {
			// The write may have happened (or cannot be told): keep
			// newID's record, so the slot is never left without a VM.
			return nil, fmt.Errorf("network: rename %q to %q: %w", oldID, newID, err)
		}
		return fail(fmt.Errorf("network: rename %q to %q: %w", oldID, newID, err))
	}
	// Committed: oldID's record is stale from now on.
	if err := m.step("rename-old"); err != nil {
		return nil, err
	}
	if err := m.store.Delete(kindVM, oldID); err != nil {
		m.log.Warn("network: rename: remove the old record (stale: Cleanup removes it)", "vm", oldID, "err", err)
	}
	m.log.Info("network: vm renamed", "from", oldID, "to", newID, "slot", l.Name)
	return m.slotOf(newID, &l), nil
}

// retoken rewrites lease l, under the allocation lock, with token to in
// place of from; it fails if the lease no longer carries from.
func (m *Manager) retoken(ctx context.Context, l *leaseRecord, from, to string) error {
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	var cur leaseRecord
	if err := m.store.Get(kindLease, l.Name, &cur); err != nil {
		return fmt.Errorf("lease %s: %w", l.Name, err)
	}
	if cur.Token != from {
		return fmt.Errorf("lease %s changed hands meanwhile", l.Name)
	}
	cur.Token = to
	if err := m.store.Put(kindLease, l.Name, &cur); err != nil {
		return fmt.Errorf("lease %s: %w", l.Name, err)
	}
	*l = cur
	return nil
}
