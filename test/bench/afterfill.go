package main

import (
	"context"
	"fmt"
	"time"

	"github.com/minio/minio-go/v7"
)

// afterFillRows: a rollout's burst lands in the seconds after a blob's
// cold fill, while the cache still uploads it to S3. The 256 MiB blob is
// pulled cold through depproxy on MinIO with a hot tier, then read
// warmPulls times at once after; MinIO's own GET of the stored object,
// in the same run, is the bar.
func (b *bench) afterFillRows(runs int) []string {
	var after, direct []measure
	for r := 0; r < runs; r++ {
		c := b.start("depproxy minio, hot tier")
		b.fetch(c, blobRepo, b.blob)
		b.front.Reset()
		start := time.Now()
		var total int64
		for i := 0; i < warmPulls; i++ {
			total += b.fetch(c, blobRepo, b.blob)
		}
		after = append(after, measure{wall: time.Since(start), bytes: total, upstream: float64(b.front.Bytes("blobs")) / bigBlob})
		b.waitStored(c, "cache/blobs/sha256/"+b.blob.Hex)
		start, total = time.Now(), 0
		for i := 0; i < warmPulls; i++ {
			total += b.minioGet(c, "cache/blobs/sha256/"+b.blob.Hex)
		}
		direct = append(direct, measure{wall: time.Since(start), bytes: total})
		c.stop()
	}
	a, d := median(after), median(direct)
	return []string{
		row("depproxy minio, hot tier", fmt.Sprintf("warm pull right after the cold fill (still being stored), 256 MiB blob ×%d", warmPulls), a),
		row("MinIO itself", fmt.Sprintf("direct GET of the stored blob ×%d (%.2f× depproxy's time above)", warmPulls, d.wall.Seconds()/a.wall.Seconds()), d),
	}
}

// waitStored waits until the cache has stored key in its bucket.
func (b *bench) waitStored(c *cache, key string) {
	mc, err := minio.New(b.minio.Addr, &minio.Options{Creds: b.minio.Credentials()})
	if err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := mc.StatObject(context.Background(), c.bucket, key, minio.StatObjectOptions{}); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: %s not stored after a minute", c.name, key)
		}
	}
}
