package api_test

import (
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestMQTTTopics(t *testing.T) {
	dev := strings.Repeat("ab", 32)
	boot := "boot-0123456789abcdef"
	if got := api.RequestTopic(dev); got != "enroll/v1/dev/"+dev+"/req" {
		t.Errorf("device request topic %q", got)
	}
	if got := api.ResponseTopic(boot); got != "enroll/v1/boot/"+boot+"/resp" {
		t.Errorf("bootstrap response topic %q", got)
	}
	for _, tc := range []struct {
		topic        string
		client, kind string
	}{
		{"enroll/v1/dev/" + dev + "/req", dev, "req"},
		{"enroll/v1/boot/" + boot + "/resp", boot, "resp"},
		{"enroll/v1/boot/" + dev + "/req", "", ""},  // a device ID in the bootstrap subtree
		{"enroll/v1/dev/" + boot + "/req", "", ""},  // a bootstrap ID in the device subtree
		{"enroll/v1/dev/" + dev + "/cfg", "", ""},   // unknown kind
		{"enroll/v1/dev/" + dev + "/req/x", "", ""}, // extra level
		{"enroll/v1/boot/someone/req", "", ""},      // not a bootstrap ID
		{"other/v1/dev/" + dev + "/req", "", ""},    // another root
	} {
		client, kind, ok := api.ClientOfTopic(tc.topic)
		if client != tc.client || kind != tc.kind || ok != (tc.client != "") {
			t.Errorf("ClientOfTopic(%q) = %q, %q, %v", tc.topic, client, kind, ok)
		}
	}
}
