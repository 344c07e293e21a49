package queue

import (
	"encoding/json"
	"fmt"
)

// Owns reports whether a caller scoped to owner may see and change an
// email owned by emailOwner (Email.Owner): an empty owner (an admin key,
// the operator's CLI, an intake without keys) every email, any other only
// its own. An email without an owner (queued by an intake without keys, or
// before owners were recorded) is visible to the unscoped only.
func Owns(owner, emailOwner string) bool {
	return owner == "" || owner == emailOwner
}

// PayloadOwner returns the owner of a task payload written by NewTask
// without decoding the rest: a listing filters many payloads by owner and
// decodes only those it shows.
func PayloadOwner(payload []byte) (string, error) {
	var p struct {
		Owner string `json:"owner"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return "", fmt.Errorf("queue: decode owner: %w", err)
	}
	return p.Owner, nil
}
