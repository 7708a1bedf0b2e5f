"""The support example bot: menu, keyword answers, order status, human handoff."""

from __future__ import annotations

from bots.support import support

PHONE = "380500000006"


async def test_menu_and_answers_by_number(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)
    [menu] = await chat.send("Menu")
    assert menu.text.startswith("Hi, this is Acme Support") and menu.step == "menu"
    [hours] = await chat.answer("1")
    assert hours.text.startswith("We're open Monday to Friday")
    [prices] = await chat.answer("prices")
    assert prices.text.startswith("Delivery is free from 50 EUR")
    [bye] = await chat.answer("0")
    assert bye.text.startswith("Thanks for contacting Acme")
    assert chat.conversation().status.value == "done"


async def test_keywords_work_without_the_menu(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)
    [hours] = await chat.send("  Opening HOURS ")
    assert hours.text.startswith("We're open")
    assert chat.conversation().step == "menu"


async def test_order_status_validates_the_number(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)
    [ask] = await chat.send("order")
    assert ask.text.startswith("Please send your 6-digit order number")
    [invalid] = await chat.answer("12")
    assert invalid.text.startswith("An order number has 6 digits")
    [found] = await chat.answer("#100200")
    assert found.text.startswith("Order 100200 is shipped on Monday")
    assert found.step == "menu"
    await chat.answer("3")
    [missing] = await chat.answer("999999")
    assert missing.text.startswith("I couldn't find order 999999")
    assert chat.state == {"orders_checked": ["100200", "999999"]}


async def test_order_number_gives_up_after_retries(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)
    await chat.send("order")
    await chat.answer("a")
    await chat.answer("b")
    [bye] = await chat.answer("c")
    assert bye.text.startswith("Thanks for contacting Acme")
    assert chat.conversation().status.value == "gave_up"


async def test_invalid_menu_choice_is_reasked(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)
    await chat.send("menu")
    [again] = await chat.answer("pizza")
    assert again.text == ('Sorry, I didn\'t get "pizza". Reply 1 (hours), 2 (prices),'
                          " 3 (order status), 4 (a person), 5 (українською) or 0 (finish).")


async def test_agent_stops_auto_replies_until_released(bot_harness):
    harness = await bot_harness(flows=[support])
    chat = harness.chat(PHONE)
    [agent] = await chat.send("agent")
    assert agent.text.startswith("OK, a person from our team")
    assert await chat.answer("hello?") == []
    assert await chat.answer("menu") == []
    assert chat.conversation().status.value == "human"
    assert (await harness.runtime.store.release(PHONE, 0.0)) is not None
    [menu] = await chat.send("menu")
    assert menu.text.startswith("Hi, this is Acme Support")


async def test_an_order_update_goes_as_a_notice_and_menu_still_starts_the_flow(bot_harness):
    harness = await bot_harness(flows=[support])
    await harness.notify(PHONE, "support/order_shipped.txt", sms="support/order_shipped_sms.txt",
                         order="100300")
    chat = harness.chat(PHONE)
    [notice] = chat.unread()
    assert (notice.type, notice.one_way) == (106, True)
    assert notice.text.startswith("Good news: your order 100300 has shipped")
    assert notice.sms == "Acme: order 100300 has shipped, arriving within 3 working days."
    assert chat.conversation() is None  # a notice starts nothing

    [menu] = await chat.send("menu")  # no 2Way message yet: sent without tracking data
    assert menu.step == "menu" and chat.conversation().flow == "support"


async def test_any_first_message_gets_the_menu(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)  # support is the default flow
    [menu] = await chat.send("where is my order?")
    assert menu.text.startswith("Hi, this is Acme Support") and menu.step == "menu"
    [ask] = await chat.answer("3")
    assert ask.text.startswith("Please send your 6-digit order number")


async def test_it_speaks_ukrainian_when_asked_and_keeps_to_it(bot_harness):
    chat = (await bot_harness(flows=[support])).chat(PHONE)
    await chat.send("menu")
    [menu] = await chat.answer("5")
    assert menu.text.startswith("Вітаємо, це підтримка Acme") and menu.step == "menu"
    [ask] = await chat.answer("3")
    assert ask.text.startswith("Надішліть, будь ласка, 6-значний номер")
    [found] = await chat.answer("100200")
    assert found.text.startswith("Замовлення 100200: відправлено в понеділок")
    [english] = await chat.answer("5")  # and back
    assert english.text.startswith("Hi, this is Acme Support")


async def test_a_ukrainian_number_is_greeted_in_ukrainian_when_the_setting_says_so(bot_harness):
    chat = (await bot_harness(flows=[support], locales={"380": "uk"})).chat(PHONE)
    [menu] = await chat.send("привіт")
    assert menu.text.startswith("Вітаємо")
