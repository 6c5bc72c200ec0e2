package store_test

import "crypto/sha256"

func sumOf(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
