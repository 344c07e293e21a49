package queue

import (
	"fmt"
	"hash/fnv"
	"strconv"
)

// Priorities of an email. Each has its own asynq queues, so a backlog of
// one never stands in front of another (worker: the high fetcher).
const (
	PriorityHigh   = "high"
	PriorityNormal = "normal"
	PriorityBulk   = "bulk"
)

// Priorities lists every priority, the most urgent first.
var Priorities = []string{PriorityHigh, PriorityNormal, PriorityBulk}

// ValidPriority reports whether p is one of Priorities.
func ValidPriority(p string) bool {
	return p == PriorityHigh || p == PriorityNormal || p == PriorityBulk
}

// BaseName is the asynq queue of a priority's first shard, and the queue
// label of its metrics: "emails" for normal (the name of the one queue of
// releases before priorities, so tasks they queued are still served),
// "emails-high" and "emails-bulk".
func BaseName(priority string) string {
	switch priority {
	case PriorityHigh:
		return Name + "-high"
	case PriorityBulk:
		return Name + "-bulk"
	default:
		return Name
	}
}

// Topology names the asynq queues of every priority: Shards queues each.
// asynq keeps a queue under one Redis Cluster hash tag ({name}), so one
// queue lives on one master; the shards of a priority are named so that
// their hash slots spread evenly over the keyspace (one in each of Shards
// equal slot ranges), and with them over the masters. Names are deterministic: every process with the same Shards
// computes the same ones.
type Topology struct {
	shards int
	names  map[string][]string // priority -> shard queue names
	prio   map[string]string   // queue name -> priority
	all    []string
}

// MaxShards bounds Topology's shards per priority.
const MaxShards = 256

// NewTopology returns the queues for shards shards per priority (1 if
// shards < 1, at most MaxShards).
func NewTopology(shards int) *Topology {
	shards = min(max(shards, 1), MaxShards)
	t := &Topology{shards: shards, names: map[string][]string{}, prio: map[string]string{}}
	for _, p := range Priorities {
		names := shardNames(BaseName(p), shards)
		t.names[p] = names
		for _, n := range names {
			t.prio[n] = p
		}
		t.all = append(t.all, names...)
	}
	return t
}

// DefaultTopology is one queue per priority.
var DefaultTopology = NewTopology(1)

// orDefault lets a nil *Topology stand for DefaultTopology.
func (t *Topology) orDefault() *Topology {
	if t == nil {
		return DefaultTopology
	}
	return t
}

// Shards is the number of queues per priority.
func (t *Topology) Shards() int { return t.orDefault().shards }

// Queues returns the shard queues of a priority (normal's for an unknown
// one).
func (t *Topology) Queues(priority string) []string {
	t = t.orDefault()
	if q, ok := t.names[priority]; ok {
		return q
	}
	return t.names[PriorityNormal]
}

// All returns every queue, the most urgent priority first.
func (t *Topology) All() []string { return t.orDefault().all }

// Priority returns the priority whose queue name is, and whether it is one.
func (t *Topology) Priority(name string) (string, bool) {
	p, ok := t.orDefault().prio[name]
	return p, ok
}

// Pick returns the queue an email of priority with id goes to: a hash of
// the id chooses the shard, so the emails of a batch spread over them and
// the queue of an id can be found again (Lookup tries each priority).
func (t *Topology) Pick(priority, id string) string {
	qs := t.Queues(priority)
	if len(qs) == 1 {
		return qs[0]
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return qs[h.Sum32()%uint32(len(qs))]
}

// Candidates returns the queues that may hold email id: its shard of each
// priority, normal first (where emails without a priority went).
func (t *Topology) Candidates(id string) []string {
	return []string{t.Pick(PriorityNormal, id), t.Pick(PriorityBulk, id), t.Pick(PriorityHigh, id)}
}

// shardNames returns n queue names for base: base itself, in whichever of
// n equal slot ranges its slot falls, then one name for each other range,
// base.i.s with the smallest s whose slot lies within a quarter of a range
// of that range's middle. The slots are spread as evenly as n allows, so a
// cluster whose masters hold equal slot ranges gets n/masters shards each.
func shardNames(base string, n int) []string {
	names := []string{base}
	if n == 1 {
		return names
	}
	const slots = 16384
	width := slots / n
	taken := Slot(base) * n / slots
	i := 1
	for r := range n {
		if r == taken {
			continue
		}
		mid := r*slots/n + width/2
		for s := 0; ; s++ {
			name := base + "." + strconv.Itoa(i) + "." + strconv.Itoa(s)
			d := Slot(name) - mid
			if d < 0 {
				d = -d
			}
			if d <= max(width/4, 1) {
				names = append(names, name)
				break
			}
			if s > 1<<22 { // never reached: CRC16 covers the slots evenly
				panic(fmt.Sprintf("queue: no shard name for slot %d", mid))
			}
		}
		i++
	}
	return names
}

// Slot is the Redis Cluster hash slot of asynq's keys for queue name
// (asynq:{name}:…): CRC16 (XMODEM) of name mod 16384.
func Slot(name string) int { return int(crc16(name) % 16384) }

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
