package queue_test

import (
	"testing"

	"github.com/sendq/sendq/queue"
)

func TestTopologyNames(t *testing.T) {
	one := queue.NewTopology(1)
	for p, want := range map[string]string{queue.PriorityHigh: "emails-high", queue.PriorityNormal: "emails", queue.PriorityBulk: "emails-bulk"} {
		if got := one.Queues(p); len(got) != 1 || got[0] != want {
			t.Errorf("Queues(%s) = %v; want [%s]", p, got, want)
		}
	}
	if len(one.All()) != 3 {
		t.Errorf("All() = %v; want 3 queues", one.All())
	}
	// The keys of Redis Cluster are split in three equal slot ranges on
	// 3 masters (redis-cli --cluster create): 6 shards put 2 on each.
	six := queue.NewTopology(6)
	for _, p := range queue.Priorities {
		qs := six.Queues(p)
		if len(qs) != 6 || qs[0] != queue.BaseName(p) {
			t.Fatalf("Queues(%s) = %v; want 6, the first %s", p, qs, queue.BaseName(p))
		}
		perMaster := map[int]int{}
		seen := map[string]bool{}
		for _, q := range qs {
			if seen[q] {
				t.Errorf("%s twice in %v", q, qs)
			}
			seen[q] = true
			perMaster[queue.Slot(q)*3/16384]++
			if got, ok := six.Priority(q); !ok || got != p {
				t.Errorf("Priority(%s) = %s, %v; want %s", q, got, ok, p)
			}
		}
		for m := range 3 {
			if perMaster[m] != 2 {
				t.Errorf("%s: %d shards in slot range %d of 3 (slots %v); want 2", p, perMaster[m], m, perMaster)
			}
		}
		// Deterministic: another process computes the same names.
		again := queue.NewTopology(6).Queues(p)
		for i := range qs {
			if qs[i] != again[i] {
				t.Errorf("shard %d named %s, then %s", i, qs[i], again[i])
			}
		}
	}
	// Ids spread over the shards, and an id always picks the same one.
	count := map[string]int{}
	for i := range 6000 {
		id := "id-" + string(rune('a'+i%26)) + itoa(i)
		q := six.Pick(queue.PriorityBulk, id)
		if q != six.Pick(queue.PriorityBulk, id) {
			t.Fatal("Pick is not stable")
		}
		count[q]++
	}
	for _, q := range six.Queues(queue.PriorityBulk) {
		if count[q] < 800 {
			t.Errorf("shard %s got %d of 6000 ids; want about 1000", q, count[q])
		}
	}
}

// Slot is Redis Cluster's CRC16 slot (values from CLUSTER KEYSLOT).
func TestSlot(t *testing.T) {
	for key, want := range map[string]int{"foo": 12182, "bar": 5061, "123456789": 12739} {
		if got := queue.Slot(key); got != want {
			t.Errorf("Slot(%q) = %d; want %d", key, got, want)
		}
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
