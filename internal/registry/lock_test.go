package registry_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/registry"
)

func TestLockGoroutines(t *testing.T) {
	r := openTemp(t)
	r2, err := registry.Open(r.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	var (
		holders, maxHolders, total atomic.Int32
		wg                         sync.WaitGroup
	)
	for i := range 8 {
		wg.Go(func() {
			reg := r
			if i%2 == 1 {
				reg = r2 // a second handle on the same directory is excluded too
			}
			for range 10 {
				unlock, err := reg.Lock(t.Context(), "vm-1")
				if err != nil {
					t.Error(err)
					return
				}
				n := holders.Add(1)
				for {
					m := maxHolders.Load()
					if n <= m || maxHolders.CompareAndSwap(m, n) {
						break
					}
				}
				total.Add(1)
				time.Sleep(100 * time.Microsecond)
				holders.Add(-1)
				unlock()
			}
		})
	}
	wg.Wait()
	if m := maxHolders.Load(); m != 1 {
		t.Fatalf("max concurrent holders = %d, want 1", m)
	}
	if n := total.Load(); n != 80 {
		t.Fatalf("acquisitions = %d, want 80", n)
	}
}

func TestLockContext(t *testing.T) {
	r := openTemp(t)
	unlock, err := r.Lock(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}

	// Another name is independent.
	unlockB, err := r.Lock(t.Context(), "b")
	if err != nil {
		t.Fatal(err)
	}
	unlockB()

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Lock(ctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock on held lock = %v, want DeadlineExceeded", err)
	}

	ctx, cancel = context.WithCancel(t.Context())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := r.Lock(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with cancel = %v, want Canceled", err)
	}
	if _, err := r.Lock(ctx, "free"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with done ctx = %v, want Canceled", err)
	}

	// Released: a waiter gets it.
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		u, err := r.Lock(ctx, "a")
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(10 * time.Millisecond)
	unlock()
	unlock() // idempotent
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
}

func TestCloseReleasesLocks(t *testing.T) {
	r := openTemp(t)
	unlock, err := r.Lock(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	unlock() // still safe

	r2, err := registry.Open(r.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	u, err := r2.Lock(ctx, "a")
	if err != nil {
		t.Fatalf("Lock after Close released it = %v", err)
	}
	u()
}

func TestCloseStopsWaiter(t *testing.T) {
	r := openTemp(t)
	other, err := registry.Open(r.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	unlock, err := other.Lock(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	got := make(chan error, 1)
	go func() {
		_, err := r.Lock(context.Background(), "a")
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r.Close()
	select {
	case err := <-got:
		if !errors.Is(err, registry.ErrClosed) {
			t.Fatalf("waiting Lock after Close = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting Lock did not return after Close")
	}
}

func TestTryLock(t *testing.T) {
	r := openTemp(t)
	unlock, ok, err := r.TryLock("vm-a")
	if err != nil || !ok {
		t.Fatalf("TryLock on a free lock: ok=%v err=%v", ok, err)
	}
	if _, ok, err := r.TryLock("vm-a"); ok || err != nil {
		t.Fatalf("TryLock on a held lock: ok=%v err=%v, want false, nil", ok, err)
	}
	unlock()
	unlock2, ok, err := r.TryLock("vm-a")
	if err != nil || !ok {
		t.Fatalf("TryLock after unlock: ok=%v err=%v", ok, err)
	}
	unlock2()
	if _, _, err := r.TryLock("../x"); !errors.Is(err, registry.ErrInvalidName) {
		t.Fatalf("TryLock bad name: %v", err)
	}
}

// TestRemoveLockKeepsExclusion removes the lock file after every critical
// section while many goroutines contend: at most one may ever be inside.
func TestRemoveLockKeepsExclusion(t *testing.T) {
	r := openTemp(t)
	var inside, violations atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				unlock, err := r.Lock(context.Background(), "vm-x")
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					violations.Add(1)
				}
				time.Sleep(50 * time.Microsecond)
				inside.Add(-1)
				if err := r.RemoveLock("vm-x"); err != nil {
					t.Error(err)
				}
				unlock()
			}
		}()
	}
	wg.Wait()
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d times two holders were inside at once", v)
	}
	if _, err := os.Stat(filepath.Join(r.Dir(), "locks", "vm-x.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file left after RemoveLock: %v", err)
	}
}
