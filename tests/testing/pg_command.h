// For tests: one SQL command on a PostgreSQL server of its own connection
// (schemas made and dropped around a test).
#ifndef KEEL_TESTING_PG_COMMAND_H_
#define KEEL_TESTING_PG_COMMAND_H_

#include <string>

namespace keel::testing {

// Runs `sql`, which returns no rows, on a new connection to `url`; a failed
// connection or command is a gtest failure naming PostgreSQL's message
// (fatal for the connection: use ASSERT_NO_FATAL_FAILURE).
void PgCommand(const std::string& url, const std::string& sql);

}  // namespace keel::testing

#endif  // KEEL_TESTING_PG_COMMAND_H_
