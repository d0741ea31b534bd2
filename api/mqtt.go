package api

import (
	"fmt"
	"strings"
)

// MQTT transport. Each client has a request topic it may publish to and a
// response topic it may subscribe to, nothing else. Certified devices and
// first-contact clients live in separate subtrees, so a broker ACL can keep
// a client without a certificate out of every device's topics whatever
// client ID it claims:
//
//	enroll/v1/dev/<device ID>/req|resp    a device with its certificate
//	enroll/v1/boot/<client ID>/req|resp   first contact, no certificate
//
// A device with a certificate connects with its device ID (the broker
// checks it against the certificate). A device without one connects with a
// bootstrap ID "boot-<random>" and may only begin and finish enrollment.
// Finish answers are sealed to the device (package sealing), so the broker
// cannot read or alter them.
const (
	MQTTTopicRoot = "enroll/v1/"
	// MQTTDeviceRoot and MQTTBootstrapRoot are the two subtrees.
	MQTTDeviceRoot    = MQTTTopicRoot + "dev/"
	MQTTBootstrapRoot = MQTTTopicRoot + "boot/"
	// BootstrapClientPrefix starts every first-contact client ID; it can
	// never collide with a device ID (64 hex characters).
	BootstrapClientPrefix = "boot-"
	// MaxMQTTMessageBytes bounds one MQTT payload either way.
	MaxMQTTMessageBytes = MaxFinishRequestBytes + 4<<10
)

// MQTT operations.
const (
	OpBegin  = "begin"
	OpFinish = "finish"
	OpWhoami = "whoami"
	// OpConfig marks a bundle the server pushes to a connected device
	// (enroll/v1/dev/<id>/resp) when an operator publishes a new config
	// version; it answers no request.
	OpConfig = "config"
)

// RequestTopic is the topic a client publishes requests to.
func RequestTopic(client string) string { return clientRoot(client) + client + "/req" }

// ResponseTopic is the topic a client receives answers on.
func ResponseTopic(client string) string { return clientRoot(client) + client + "/resp" }

func clientRoot(client string) string {
	if ValidDeviceID(client) {
		return MQTTDeviceRoot
	}
	return MQTTBootstrapRoot
}

// ClientOfTopic returns the client ID of a request or response topic and
// its kind ("req" or "resp"). A device ID in the bootstrap subtree, or a
// bootstrap ID in the device subtree, is not a valid topic.
func ClientOfTopic(topic string) (client, kind string, ok bool) {
	rest, ok := strings.CutPrefix(topic, MQTTTopicRoot)
	if !ok {
		return "", "", false
	}
	subtree, rest, _ := strings.Cut(rest, "/")
	client, kind, ok = strings.Cut(rest, "/")
	switch {
	case !ok, kind != "req" && kind != "resp", !ValidMQTTClientID(client):
		return "", "", false
	case subtree == "dev" && ValidDeviceID(client), subtree == "boot" && !ValidDeviceID(client):
		return client, kind, true
	}
	return "", "", false
}

// ValidMQTTClientID accepts a device ID or a bootstrap ID: "boot-" then 16
// to 64 characters of [a-z0-9].
func ValidMQTTClientID(id string) bool {
	if ValidDeviceID(id) {
		return true
	}
	rest, ok := strings.CutPrefix(id, BootstrapClientPrefix)
	if !ok || len(rest) < 16 || len(rest) > 64 {
		return false
	}
	for _, c := range rest {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// MQTTRequest is one request over MQTT. ID is unique per client: a
// redelivered request (QoS 1) carries the same ID and gets the same answer.
type MQTTRequest struct {
	ID            string         `json:"id"`
	Op            string         `json:"op"`
	CorrelationID string         `json:"correlation_id,omitempty"`
	Begin         *BeginRequest  `json:"begin,omitempty"`
	Finish        *FinishRequest `json:"finish,omitempty"`
}

// Validate checks the envelope and its body.
func (r *MQTTRequest) Validate() error {
	if !validMessageID(r.ID) {
		return Errorf(CodeBadRequest, "id must be 8 to 64 characters of [A-Za-z0-9_-]")
	}
	if r.CorrelationID != "" && !ValidCorrelationID(r.CorrelationID) {
		return Errorf(CodeBadRequest, "correlation_id must be 1 to %d characters of [A-Za-z0-9._-]", MaxCorrelationIDLen)
	}
	switch r.Op {
	case OpBegin:
		if r.Begin == nil || r.Finish != nil {
			return Errorf(CodeBadRequest, "op begin carries exactly a begin body")
		}
		return r.Begin.Validate()
	case OpFinish:
		if r.Finish == nil || r.Begin != nil {
			return Errorf(CodeBadRequest, "op finish carries exactly a finish body")
		}
		return r.Finish.Validate()
	case OpWhoami:
		if r.Begin != nil || r.Finish != nil {
			return Errorf(CodeBadRequest, "op whoami carries no body")
		}
		return nil
	default:
		return Errorf(CodeBadRequest, "op must be %s, %s or %s, got %q", OpBegin, OpFinish, OpWhoami, r.Op)
	}
}

// MQTTResponse answers an MQTTRequest of the same ID.
type MQTTResponse struct {
	ID    string         `json:"id"`
	Op    string         `json:"op"`
	Error *Error         `json:"error,omitempty"`
	Begin *BeginResponse `json:"begin,omitempty"`
	// Sealed is the FinishResponse (JSON) sealed with the session's key:
	// sealing.Open(key, session ID, response ID, Sealed).
	Sealed []byte          `json:"sealed,omitempty"`
	Whoami *WhoamiResponse `json:"whoami,omitempty"`
	// Bundle is a pushed config bundle (compact JWS, op config): the device
	// applies it with the same signature and rollback checks as one
	// received at enrollment.
	Bundle string `json:"bundle,omitempty"`
}

// Validate checks the envelope of an answer.
func (r *MQTTResponse) Validate() error {
	if !validMessageID(r.ID) {
		return fmt.Errorf("response id %q is malformed", r.ID)
	}
	n := 0
	for _, set := range []bool{r.Error != nil, r.Begin != nil, len(r.Sealed) > 0, r.Whoami != nil, r.Bundle != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("response must carry exactly one of error, begin, sealed, whoami, bundle; has %d", n)
	}
	return nil
}

func validMessageID(id string) bool {
	if len(id) < 8 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
