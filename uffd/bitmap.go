package uffd

import (
	"math/bits"
	"sync/atomic"
)

// bitmap is a fixed-size set of page indexes, safe for concurrent use.
type bitmap []atomic.Uint64

func newBitmap(n uint64) bitmap { return make(bitmap, (n+63)/64) }

func (b bitmap) get(i uint64) bool { return b[i>>6].Load()&(1<<(i&63)) != 0 }

func (b bitmap) set(i uint64) { b[i>>6].Or(1 << (i & 63)) }

// setRange sets bits [i, i+n).
func (b bitmap) setRange(i, n uint64) {
	for n > 0 {
		w, off := i>>6, i&63
		k := 64 - off
		if k > n {
			k = n
		}
		var mask uint64 = ^uint64(0)
		if k < 64 {
			mask = (1<<k - 1) << off
		}
		b[w].Or(mask)
		i += k
		n -= k
	}
}

// count returns the number of set bits.
func (b bitmap) count() uint64 {
	var c int
	for i := range b {
		c += bits.OnesCount64(b[i].Load())
	}
	return uint64(c)
}

// staticBitmap is an immutable set of page indexes (nil means empty).
type staticBitmap []uint64

func (b staticBitmap) get(i uint64) bool { return b != nil && b[i>>6]&(1<<(i&63)) != 0 }

func (b staticBitmap) setRange(i, n uint64) {
	for j := i; j < i+n; j++ {
		b[j>>6] |= 1 << (j & 63)
	}
}

func (b staticBitmap) count() uint64 {
	var c int
	for _, w := range b {
		c += bits.OnesCount64(w)
	}
	return uint64(c)
}

func bitsOnes(w uint64) int { return bits.OnesCount64(w) }
