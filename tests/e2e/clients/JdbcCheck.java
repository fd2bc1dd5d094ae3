// A JDBC client of `tally serve`'s Postgres endpoint, as DBeaver and Metabase use it: the
// navigator's metadata calls, then a prepared statement run past pgjdbc's prepareThreshold (5),
// so the last runs go through a named server-side statement. Run by tests/e2e/serve.rs with
// Debian's pgjdbc (libpostgresql-jdbc-java): java -cp postgresql.jar JdbcCheck.java PORT TOKEN DAY
import java.sql.*;
public class JdbcCheck {
    public static void main(String[] a) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + a[0] + "/tally?user=analyst&password=" + a[1] + "&sslmode=disable";
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            try (ResultSet t = md.getTables(null, null, "%", new String[]{"TABLE"})) {
                while (t.next()) System.out.println("table " + t.getString("TABLE_NAME"));
            }
            try (ResultSet col = md.getColumns(null, null, "ledger", "%")) {
                while (col.next()) System.out.println("column " + col.getString("COLUMN_NAME") + " " + col.getString("TYPE_NAME"));
            }
            try (PreparedStatement p = c.prepareStatement("SELECT count(*), sum(amount) FROM ledger WHERE event_date = ?::date")) {
                for (int i = 0; i < 7; i++) {
                    p.setString(1, a[2]);
                    try (ResultSet r = p.executeQuery()) { r.next(); if (i == 6) System.out.println("sum " + r.getLong(1) + " " + r.getBigDecimal(2)); }
                }
            }
        }
    }
}
