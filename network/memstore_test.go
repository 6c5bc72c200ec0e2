package network

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
)

// memStore is an in-memory Store, for tests and benchmarks that leave the
// FileStore's fsyncs out.
type memStore struct {
	mu    sync.Mutex
	data  map[string][]byte
	locks map[string]chan struct{}
}

func newMemStore() *memStore {
	return &memStore{data: map[string][]byte{}, locks: map[string]chan struct{}{}}
}

func (s *memStore) put(kind, id string, v any, excl bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := kind + "/" + id
	if _, ok := s.data[k]; ok && excl {
		return fmt.Errorf("%w: %s", ErrRecordExists, k)
	}
	s.data[k] = b
	return nil
}

func (s *memStore) Create(kind, id string, v any) error { return s.put(kind, id, v, true) }
func (s *memStore) Put(kind, id string, v any) error    { return s.put(kind, id, v, false) }

func (s *memStore) Get(kind, id string, v any) error {
	s.mu.Lock()
	b, ok := s.data[kind+"/"+id]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s/%s", ErrRecordNotFound, kind, id)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(b, v)
}

func (s *memStore) Delete(kind, id string) error {
	s.mu.Lock()
	delete(s.data, kind+"/"+id)
	s.mu.Unlock()
	return nil
}

func (s *memStore) List(kind string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := []string{}
	for k := range s.data {
		if len(k) > len(kind) && k[:len(kind)+1] == kind+"/" {
			ids = append(ids, k[len(kind)+1:])
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func (s *memStore) Lock(ctx context.Context, name string) (func(), error) {
	for {
		s.mu.Lock()
		ch, held := s.locks[name]
		if !held {
			ch = make(chan struct{})
			s.locks[name] = ch
			s.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					s.mu.Lock()
					delete(s.locks, name)
					s.mu.Unlock()
					close(ch)
				})
			}, nil
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
