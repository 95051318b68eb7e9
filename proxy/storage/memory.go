package storage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Memory keeps objects in this process's memory: the backend of the fast
// tests, which need no disk and no server. It passes the suite every
// backend passes; nothing survives the process.
type Memory struct {
	mu      sync.RWMutex
	objects map[string]memoryObject
}

type memoryObject struct {
	data    []byte
	modTime time.Time
}

// NewMemory returns an empty in-memory backend.
func NewMemory() *Memory { return &Memory{objects: map[string]memoryObject{}} }

func (m *Memory) Open(_ context.Context, key string) (io.ReadSeekCloser, Info, error) {
	m.mu.RLock()
	o, ok := m.objects[key]
	m.mu.RUnlock()
	if !ok {
		return nil, Info{}, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	// Objects are never changed in place (a Put replaces the slice), so
	// a reader may keep reading the one it opened.
	return nopCloser{bytes.NewReader(o.data)}, Info{Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

func (m *Memory) Stat(_ context.Context, key string) (Info, error) {
	m.mu.RLock()
	o, ok := m.objects[key]
	m.mu.RUnlock()
	if !ok {
		return Info{}, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return Info{Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

func (m *Memory) Put(_ context.Context, key string, r io.Reader, size int64) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if size >= 0 && int64(len(data)) != size {
		return fmt.Errorf("%s: got %d bytes, want %d", key, len(data), size)
	}
	m.mu.Lock()
	m.objects[key] = memoryObject{data: data, modTime: time.Now()}
	m.mu.Unlock()
	return nil
}

// PutFile stores a copy of the file at path.
func (m *Memory) PutFile(ctx context.Context, key, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return m.Put(ctx, key, f, -1)
}

func (m *Memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	delete(m.objects, key)
	m.mu.Unlock()
	return nil
}

func (m *Memory) List(_ context.Context, prefix string, fn func(key string, info Info) error) error {
	m.mu.RLock()
	var keys []string
	for k := range m.objects {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	m.mu.RUnlock()
	sort.Strings(keys)
	for _, k := range keys {
		info, err := m.Stat(context.Background(), k)
		if err != nil {
			continue // deleted since the listing began
		}
		if err := fn(k, info); err != nil {
			return err
		}
	}
	return nil
}

type nopCloser struct{ io.ReadSeeker }

func (nopCloser) Close() error { return nil }
