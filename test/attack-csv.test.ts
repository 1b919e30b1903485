import t from 'tap'
import { csvField, csvLine } from '../src/admin/csv.js'

// Client-supplied text (user names from Open WebUI, models, chat ids) lands in CSV exports that
// admins open in spreadsheets: a cell must never start like a formula.

t.test('cells that start like a formula are defused; numbers are not touched', async (t) => {
  t.equal(csvField('=HYPERLINK("http://evil","x")'), `"'=HYPERLINK(""http://evil"",""x"")"`)
  t.equal(csvField('+1+cmd'), "'+1+cmd")
  t.equal(csvField('@SUM(A1)'), "'@SUM(A1)")
  t.equal(csvField('-2+3+cmd|x'), "'-2+3+cmd|x", 'a minus before a digit is still a formula unless the cell is a number')
  t.equal(csvField('-cmd'), "'-cmd")
  t.equal(csvField('\tx'), "'\tx")
  t.equal(csvField('-0.5'), '-0.5')
  t.equal(csvField('0.000001601103751987654321'), '0.000001601103751987654321')
  t.equal(csvLine(['Zoë', '=1+1', '12']), "Zoë,'=1+1,12\r\n")
})
