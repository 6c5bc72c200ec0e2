package microvm_test

import (
	"slices"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// TestFollowVM: a follower of a VM by id keeps its events across renames
// (the renamed event included), and not those of another VM that takes
// the id it had.
func TestFollowVM(t *testing.T) {
	ev := func(vm string, typ microvm.EventType, from string) microvm.Event {
		return microvm.Event{VM: vm, Type: typ, From: from}
	}
	stream := []microvm.Event{
		ev("pool-1", microvm.EventCreated, ""),
		ev("pool-2", microvm.EventCreated, ""),
		ev("pool-2", microvm.EventRenamed, "pool-9"), // another VM, renamed to pool-2
		ev("alice", microvm.EventRenamed, "pool-1"),
		ev("pool-1", microvm.EventCreated, ""), // a new VM under the old id
		ev("alice", microvm.EventStarted, ""),
		ev("bob", microvm.EventRenamed, "alice"),
		ev("alice", microvm.EventCreated, ""),
		ev("bob", microvm.EventDestroyed, ""),
	}
	for _, c := range []struct {
		id   string
		want []int
	}{
		{"pool-1", []int{0, 3, 5, 6, 8}},
		{"alice", []int{3, 5, 6, 8}},
		{"bob", []int{6, 8}},
		{"pool-2", []int{1, 2}},
		{"pool-9", []int{2}},
		{"none", nil},
	} {
		keep := microvm.FollowVM(c.id)
		var got []int
		for i, e := range stream {
			if keep(e) {
				got = append(got, i)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("FollowVM(%s) kept %v, want %v", c.id, got, c.want)
		}
	}
	if !microvm.EventRenamed.Valid() || !slices.Contains(microvm.EventTypes(), microvm.EventRenamed) {
		t.Error("renamed is not a valid event type")
	}
}
