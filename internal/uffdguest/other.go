//go:build !linux

// Package uffdguest plays Firecracker's side of the userfaultfd handshake;
// it is Linux-only.
package uffdguest
