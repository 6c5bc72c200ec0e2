// Package fcstandin is what tests use to run the stand-in firecracker, a
// program that serves Firecracker's API like Firecracker v1.0 or
// 1.17.0-dev, checks every request against the official API specification,
// and simulates the microVM behind it (no KVM, no guest). Build compiles
// it, SpecDir finds the specifications it reads, and the constants here are
// what such tests select (APIv10, APILatest) and check (fault messages,
// guest I/O figures). The stand-in's behaviour and its FCSTANDIN_* controls
// are documented in package internal/fcstandin/server.
//
// # Two modules
//
// The stand-in itself (internal/fcstandin/server, with its main package
// cmd/fcstandin) is a module of its own, github.com/mvm-dev/microvm/
// internal/fcstandin/server, which replaces the library's module with this
// checkout (replace github.com/mvm-dev/microvm => ../../..). Checking
// requests against the specification needs kin-openapi, a YAML decoder and
// the router kin-openapi uses; in the library's module those would be
// requirements of every program that depends on mvm, and in its go.sum,
// although no library package uses them. This package, which the library's
// tests import, needs only the standard library; the server imports it, so
// both sides share one definition of each constant.
//
// Build runs the go command in the stand-in's module, so the stand-in is
// built with its own go.mod and go.sum (committed) and its dependencies are
// downloaded on first use. The stand-in's own tests are in its module: the
// README's test command runs them as a second go test
// (go -C internal/fcstandin/server test -race ./...), and .ci/run vets them.
// A go.work file joining the two modules was not used: it would make
// `go test ./...` build the library with the versions the stand-in's
// dependencies select (not the ones its consumers get), it refuses
// -mod=mod, and bench (another module below the root) would have to join it.
package fcstandin
