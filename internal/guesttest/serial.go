package guesttest

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// Serial is a guest's serial output as a test sees it: an unbounded
// in-memory pipe that an agent client reads in order (the copy from the
// guest never blocks on the client), plus everything the guest printed,
// kept for String. Write what the guest prints, Close at its end of
// output.
type Serial struct {
	mu     sync.Mutex
	cond   *sync.Cond
	all    strings.Builder
	unread bytes.Buffer
	closed bool
}

// NewSerial returns an empty Serial.
func NewSerial() *Serial {
	s := &Serial{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Write appends what the guest printed.
func (s *Serial) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all.Write(p)
	s.unread.Write(p)
	s.cond.Broadcast()
	return len(p), nil
}

// Read reads what the guest printed and no Read returned yet, waiting for
// more; io.EOF after Close.
func (s *Serial) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.unread.Len() == 0 && !s.closed {
		s.cond.Wait()
	}
	if s.unread.Len() == 0 {
		return 0, io.EOF
	}
	return s.unread.Read(p)
}

// Close ends the output: Read returns io.EOF once it is drained.
func (s *Serial) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cond.Broadcast()
	return nil
}

// String is everything the guest printed so far.
func (s *Serial) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all.String()
}
