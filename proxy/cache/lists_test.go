package cache

import (
	"fmt"
	"testing"
)

// The list cache forgets the least recently used answers past its
// bounds, in entries and in bytes; one read lately is kept.
func TestListCacheIsBounded(t *testing.T) {
	var l listCache
	l.put("first", []byte("{}"), false)
	for i := range listMaxEntries {
		if i == listMaxEntries/2 {
			l.get("first") // read lately: kept
		}
		l.put(fmt.Sprint(i), []byte("{}"), false)
	}
	if l.order.Len() != listMaxEntries || len(l.byKey) != listMaxEntries {
		t.Fatalf("%d entries (%d keys), want %d", l.order.Len(), len(l.byKey), listMaxEntries)
	}
	if _, ok := l.get("first"); !ok {
		t.Error("an entry read lately was forgotten")
	}
	if _, ok := l.get("0"); ok {
		t.Error("the least recently used entry was kept")
	}
	big := make([]byte, maxListSize)
	for i := range listMaxBytes/maxListSize + 4 {
		l.put(fmt.Sprint("big", i), big, false)
	}
	if l.bytes > listMaxBytes {
		t.Errorf("%d bytes kept, over %d", l.bytes, listMaxBytes)
	}
	if e, ok := l.get(fmt.Sprint("big", listMaxBytes/maxListSize+3)); !ok || len(e.body) != maxListSize {
		t.Error("the latest answer was not kept")
	}
}
