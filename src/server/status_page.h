// GET /: a status page for people. One self-contained HTML document (no
// external assets) that polls GET /v1/status every second and draws pools,
// instances, queues, recent abnormal terminations and live charts of
// throughput, latency and terminations by cause on canvases.
//
// With a token configured, /v1/status needs it: the page asks for it once
// (or takes it from the URL fragment, /#token=...) and keeps it in
// sessionStorage.
#ifndef KEEL_SERVER_STATUS_PAGE_H_
#define KEEL_SERVER_STATUS_PAGE_H_

#include <string_view>

namespace keel::server {

std::string_view StatusPageHtml();

}  // namespace keel::server

#endif  // KEEL_SERVER_STATUS_PAGE_H_
