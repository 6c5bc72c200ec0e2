// Package microvm is the contract of mvm, a Go runtime for Firecracker
// microVMs: the [Spec] of a VM, its lifecycle [Status], the read view [VM],
// the [Runtime] interface every backend implements, and the errors callers
// test with [errors.Is] and [errors.As]. It is for every embedder: code
// written against it runs on any backend (package firecracker for real
// VMs, package memory in tests).
//
// The package holds no Firecracker code. Backends live in their own
// packages:
//
//   - github.com/mvm-dev/microvm/firecracker runs real firecracker processes;
//   - github.com/mvm-dev/microvm/memory is an in-memory runtime for tests of
//     programs that embed mvm;
//   - github.com/mvm-dev/microvm/conformance checks that a Runtime obeys this
//     contract.
//
// # Lifecycle
//
// Every runtime enforces the one transition table below (see [Transition]).
// A VM that is not in one of the "from" states of an operation is refused
// with a [*TransitionError] that matches [ErrInvalidTransition].
//
//	operation   from                        to
//	Create      (no VM)                     created
//	Start       created, stopped, failed    running
//	Stop        running, paused             stopped
//	Pause       running                     paused
//	Resume      paused                      running
//	Snapshot    running, paused             unchanged (the VM ends in the state it started in)
//	Restore     (no VM with the new id)     running, or paused when not resumed
//	Destroy     any                         destroyed (the record is removed)
//	(crash)     running, paused             failed, with the reason in VM.LastError
//	(shutdown)  running, paused             stopped, with no VM.LastError
//
// The last two rows are events, not operations: a runtime makes them when
// a VM's process ends unasked. A guest that shuts itself down cleanly
// (powers off, or resets: Firecracker exits with status 0 on a guest
// reset) leaves its VM stopped, as Stop would; any other end (a non-zero
// exit status, a signal, or an end the runtime cannot tell apart from
// those) leaves it failed.
//
// Renaming is an optional capability ([Renamer]), outside the table: it
// keeps the VM's status and is allowed when the VM is created, stopped or
// paused ([CheckRename]). Event streams ([EventSource]) record it as one
// [EventRenamed] event carrying both ids; [FollowVM] follows a VM's events
// across renames.
//
// Repeating a call: operations are not idempotent. Pausing a paused VM or
// stopping a stopped one is an invalid transition; a second Destroy of the
// same id returns [ErrNotFound], because Destroy removes the record (the id
// may then be reused). Callers that want "ensure stopped" semantics test the
// error with errors.Is.
//
// # Identifiers
//
// VM and snapshot ids are 1 to 64 characters of [A-Za-z0-9-] and do not
// start with '-' (the rule of Firecracker's jailer). Ids are never
// sanitised: anything else is refused with [ErrInvalidID].
//
// # Contexts
//
// Every operation takes a context that bounds the operation only. A VM
// outlives the context, the request and the process that created it.
package microvm
